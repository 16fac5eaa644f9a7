//! `{{name}}` substitution in a turn's text and tool inputs: `cwd` (the
//! agent's working directory, from the request's system prompt), `prompt`,
//! `turn` and the named captures of the rule's `regex`.
//!
//! Deliberately tiny (no filters, no logic): scripts are test fixtures.

/// The variable names used in `text`, in order.
pub(crate) fn variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        names.push(after[..end].trim().to_owned());
        rest = &after[end + 2..];
    }
    names
}

/// Replaces every `{{name}}` whose name is in `vars`; others stay as written.
pub(crate) fn render(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = after[..end].trim();
        match vars.iter().find(|(key, _)| key == name) {
            Some((_, value)) => out.push_str(value),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Renders every string inside a JSON value.
pub(crate) fn render_value(
    value: &serde_json::Value,
    vars: &[(String, String)],
) -> serde_json::Value {
    match value {
        serde_json::Value::String(text) => serde_json::Value::String(render(text, vars)),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(|item| render_value(item, vars)).collect())
        }
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(key, item)| (key.clone(), render_value(item, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}
