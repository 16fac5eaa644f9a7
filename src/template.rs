//! Templates: one minijinja environment with strict undefined, ccflow's
//! filters, and automatic shell quoting for `run:` commands.
//!
//! Shell quoting works through minijinja's auto-escape: templates rendered
//! for a shell are named `*.sh`, which selects a custom escape whose
//! formatter single-quotes every interpolated value unless it is marked safe
//! (`|safe`, or the output of `shell_quote`). A file named `$(rm -rf ~).rs`
//! therefore reaches the shell as one literal word.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};

/// A template problem, with the 1-based line inside the template when known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub message: String,
    pub line: Option<usize>,
    pub kind: TemplateErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateErrorKind {
    Syntax,
    Undefined,
    Render,
}

thread_local! {
    /// Files read by `read_file` during the current render (they join the inputs).
    static READ_FILES: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
}

/// The template engine for one repository.
pub struct Templates {
    env: Environment<'static>,
}

/// What a render produced.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub text: String,
    /// Repository-relative files read by `read_file`.
    pub read_files: BTreeSet<String>,
}

impl Templates {
    #[must_use]
    pub fn new(root: &Path) -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".sh") {
                AutoEscape::Custom("shell")
            } else {
                AutoEscape::None
            }
        });
        env.set_formatter(|out, state, value| {
            if matches!(state.auto_escape(), AutoEscape::Custom("shell")) && !value.is_safe() {
                // A list becomes several words, each quoted.
                if value.kind() == minijinja::value::ValueKind::Seq {
                    let words: Vec<String> = value
                        .try_iter()
                        .map(|items| items.map(|v| shell_quote(&v.to_string())).collect())
                        .unwrap_or_default();
                    out.write_str(&words.join(" "))?;
                    return Ok(());
                }
                let text = if value.is_none() {
                    String::new()
                } else {
                    value.to_string()
                };
                out.write_str(&shell_quote(&text))?;
                Ok(())
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env.add_filter("basename", |p: String| -> String {
            Path::new(&p)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        env.add_filter("dirname", |p: String| -> String {
            Path::new(&p)
                .parent()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        env.add_filter("stem", |p: String| -> String {
            Path::new(&p)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        env.add_filter("ext", |p: String| -> String {
            Path::new(&p)
                .extension()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        // Filters receive undefined values without complaint: keep strictness.
        let defined = |v: &Value| {
            if v.is_undefined() {
                Err(minijinja::Error::from(ErrorKind::UndefinedError))
            } else {
                Ok(())
            }
        };
        env.add_filter(
            "shell_dq",
            move |v: Value| -> Result<Value, minijinja::Error> {
                defined(&v)?;
                Ok(Value::from_safe_string(escape_double_quoted(&words(&v))))
            },
        );
        env.add_filter(
            "shell_sq",
            move |v: Value| -> Result<Value, minijinja::Error> {
                defined(&v)?;
                Ok(Value::from_safe_string(words(&v).replace('\'', "'\\''")))
            },
        );
        env.add_filter("shell_quote", |v: Value| -> Value {
            Value::from_safe_string(shell_quote(&v.to_string()))
        });
        env.add_filter("json", |v: Value| -> Result<String, minijinja::Error> {
            serde_json::to_string(&v).map_err(|e| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("cannot encode as JSON: {e}"),
                )
            })
        });
        let root: PathBuf = root.to_path_buf();
        env.add_filter(
            "read_file",
            move |_state: &State, p: String| -> Result<String, minijinja::Error> {
                let relative = Path::new(&p);
                if relative.is_absolute()
                    || relative
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("read_file: `{p}` must be a path inside the repository"),
                    ));
                }
                let text = std::fs::read_to_string(root.join(relative)).map_err(|e| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("read_file: cannot read `{p}`: {e}"),
                    )
                })?;
                READ_FILES.with(|files| {
                    if let Some(files) = files.borrow_mut().as_mut() {
                        files.insert(p.clone());
                    }
                });
                Ok(text)
            },
        );
        Templates { env }
    }

    /// Checks that `source` compiles.
    ///
    /// # Errors
    /// A syntax error, with its line.
    pub fn check_syntax(&self, source: &str) -> Result<(), TemplateError> {
        self.env
            .template_from_str(source)
            .map(|_| ())
            .map_err(|e| convert(&e, source, None))
    }

    /// Renders `source` with `context`; `shell` turns on automatic quoting.
    ///
    /// # Errors
    /// Syntax errors, undefined names (strict), filter failures.
    pub fn render(
        &self,
        source: &str,
        shell: bool,
        context: &Value,
    ) -> Result<Rendered, TemplateError> {
        self.compile(source, shell)?.render(context)
    }

    /// Compiles `source` once, to render it for many items (a fan-out of
    /// 100,000 files would otherwise parse the same template 100,000 times).
    ///
    /// # Errors
    /// A syntax error, with its line.
    pub fn compile<'a>(
        &'a self,
        source: &'a str,
        shell: bool,
    ) -> Result<Compiled<'a>, TemplateError> {
        if !source.contains("{{") && !source.contains("{%") {
            return Ok(Compiled {
                source,
                template: None,
            });
        }
        let name = if shell { "run.sh" } else { "text" };
        let template = self
            .env
            .template_from_named_str(name, source)
            .map_err(|e| convert(&e, source, None))?;
        Ok(Compiled {
            source,
            template: Some(template),
        })
    }
}

impl Templates {
    /// The variables `source` reads, dotted (`needs.lint.outputs`); empty
    /// when it does not compile.
    #[must_use]
    pub fn referenced(&self, source: &str) -> std::collections::HashSet<String> {
        if !source.contains("{{") && !source.contains("{%") {
            return std::collections::HashSet::new();
        }
        self.env
            .template_from_str(source)
            .map(|t| t.undeclared_variables(true))
            .unwrap_or_default()
    }
}

/// A template compiled by [`Templates::compile`] (plain text stays as it is).
pub struct Compiled<'a> {
    source: &'a str,
    template: Option<minijinja::Template<'a, 'a>>,
}

impl Compiled<'_> {
    /// Renders with `context`.
    ///
    /// # Errors
    /// Undefined names (strict), filter failures.
    pub fn render(&self, context: &Value) -> Result<Rendered, TemplateError> {
        let Some(template) = &self.template else {
            return Ok(Rendered {
                text: self.source.to_owned(),
                read_files: BTreeSet::new(),
            });
        };
        READ_FILES.with(|files| *files.borrow_mut() = Some(BTreeSet::new()));
        let result = template.render(context);
        let read_files = READ_FILES
            .with(|files| files.borrow_mut().take())
            .unwrap_or_default();
        match result {
            Ok(text) => Ok(Rendered { text, read_files }),
            Err(error) => Err(convert(&error, self.source, Some(context))),
        }
    }
}

fn convert(error: &minijinja::Error, source: &str, context: Option<&Value>) -> TemplateError {
    let line = error.line();
    match error.kind() {
        ErrorKind::SyntaxError | ErrorKind::BadEscape => TemplateError {
            message: format!(
                "template syntax error: {}",
                error.detail().unwrap_or("invalid syntax")
            ),
            line,
            kind: TemplateErrorKind::Syntax,
        },
        ErrorKind::UndefinedError => {
            let name = context.and_then(|c| undefined_name(source, c));
            let message = match name {
                Some(name) => format!("undefined template variable `{name}`"),
                None => "undefined template variable".to_owned(),
            };
            TemplateError {
                message,
                line,
                kind: TemplateErrorKind::Undefined,
            }
        }
        _ => TemplateError {
            message: format!(
                "template error: {}",
                error
                    .detail()
                    .map_or_else(|| error.to_string(), str::to_owned)
            ),
            line,
            kind: TemplateErrorKind::Render,
        },
    }
}

/// Names the first dotted variable of `source` that does not resolve in `context`.
fn undefined_name(source: &str, context: &Value) -> Option<String> {
    let env = Environment::new();
    let template = env.template_from_str(source).ok()?;
    let mut names: Vec<String> = template.undeclared_variables(true).into_iter().collect();
    names.sort();
    names.into_iter().find(|name| {
        let mut value = context.clone();
        for part in name.split('.') {
            match value.get_attr(part) {
                Ok(v) if !v.is_undefined() => value = v,
                _ => return true,
            }
        }
        false
    })
}

/// A value as text: a list becomes its items separated by spaces.
fn words(value: &Value) -> String {
    if value.kind() == minijinja::value::ValueKind::Seq {
        return value
            .try_iter()
            .map(|items| items.map(|v| v.to_string()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
    }
    if value.is_none() {
        String::new()
    } else {
        value.to_string()
    }
}

/// Escapes text for the inside of a double-quoted shell string.
fn escape_double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '"' | '$' | '`') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Makes automatic quoting follow the shell's quoting context in a `run:`
/// template: an expression written inside `"..."` is escaped for a
/// double-quoted string, one inside `'...'` for a single-quoted string, so
/// `echo "file: {{ item }}"` prints `file: a b` rather than `file: 'a b'`.
/// Expressions outside quotes keep the default (one quoted word) and
/// `|safe` always opts out. Newlines are kept, so template line numbers hold.
#[must_use]
pub fn contextualize_shell(source: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    if !source.contains("{{") {
        return source.to_owned();
    }
    let mut out = String::with_capacity(source.len() + 16);
    let mut quote = Quote::None;
    let mut rest = source;
    while !rest.is_empty() {
        // Template tags and comments do not change the shell's quoting.
        for (open, close) in [("{%", "%}"), ("{#", "#}")] {
            if rest.starts_with(open) {
                let end = rest.find(close).map_or(rest.len(), |i| i + close.len());
                out.push_str(&rest[..end]);
                rest = &rest[end..];
            }
        }
        if rest.starts_with("{{") {
            let Some(end) = rest.find("}}") else {
                out.push_str(rest);
                break;
            };
            let inner = rest[2..end].trim();
            let opted_out = inner.ends_with("|safe") || inner.ends_with("| safe");
            match quote {
                Quote::Double if !opted_out => {
                    out.push_str(&format!("{{{{ ({inner})|shell_dq }}}}"))
                }
                Quote::Single if !opted_out => {
                    out.push_str(&format!("{{{{ ({inner})|shell_sq }}}}"))
                }
                _ => out.push_str(&rest[..end + 2]),
            }
            rest = &rest[end + 2..];
            continue;
        }
        let Some(c) = rest.chars().next() else {
            break;
        };
        let len = c.len_utf8();
        match (quote, c) {
            (Quote::None | Quote::Double, '\\') => {
                // An escaped character, taken as is.
                let next = rest[len..].chars().next().map_or(0, char::len_utf8);
                out.push_str(&rest[..len + next]);
                rest = &rest[len + next..];
                continue;
            }
            (Quote::None, '\'') => quote = Quote::Single,
            (Quote::Single, '\'') => quote = Quote::None,
            (Quote::None, '"') => quote = Quote::Double,
            (Quote::Double, '"') => quote = Quote::None,
            _ => {}
        }
        out.push(c);
        rest = &rest[len..];
    }
    out
}

/// Quotes a string as one POSIX shell word (unchanged when it needs no quoting).
#[must_use]
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '_' | '-' | '.' | '/' | ':' | '=' | '@' | '%' | '+' | ',')
        });
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn templates() -> Templates {
        Templates::new(Path::new("."))
    }

    #[test]
    fn run_values_are_shell_quoted() {
        let t = templates();
        let ctx = context! { item => "$(rm -rf ~).rs", n => 3 };
        let out = t.render("cat {{ item }} {{ n }}", true, &ctx).unwrap();
        assert_eq!(out.text, "cat '$(rm -rf ~).rs' 3");
        let out = t.render("echo {{ item|safe }}", true, &ctx).unwrap();
        assert_eq!(out.text, "echo $(rm -rf ~).rs");
        let out = t.render("echo {{ item }}", false, &ctx).unwrap();
        assert_eq!(out.text, "echo $(rm -rf ~).rs");
        let out = t
            .render(
                "cat {{ files }}",
                true,
                &context! { files => vec!["a b", "c"] },
            )
            .unwrap();
        assert_eq!(out.text, "cat 'a b' c");
        let out = t.render("echo {{ \"it's\" }}", true, &ctx).unwrap();
        assert_eq!(out.text, "echo 'it'\\''s'");
    }

    #[test]
    fn quoting_follows_the_shell_context() {
        let t = templates();
        let ctx = context! { item => "a b$c\"d", name => "it's" };
        let render = |src: &str| {
            t.render(&contextualize_shell(src), true, &ctx)
                .unwrap()
                .text
        };
        assert_eq!(render("echo {{ item }}"), "echo 'a b$c\"d'");
        assert_eq!(
            render("echo \"x {{ item }} y\""),
            "echo \"x a b\\$c\\\"d y\""
        );
        assert_eq!(render("echo 'n={{ name }}'"), "echo 'n=it'\\''s'");
        assert_eq!(render("echo \"{{ item|safe }}\""), "echo \"a b$c\"d\"");
        assert_eq!(
            render("{% if true %}echo \"{{ name }}\"{% endif %}"),
            "echo \"it's\""
        );
        // What sh makes of it is the value itself.
        for src in [
            "printf %s \"{{ item }}\"",
            "printf %s '{{ name }}'",
            "printf %s {{ item }}",
        ] {
            let script = render(src);
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            let want = if src.contains("name") {
                "it's"
            } else {
                "a b$c\"d"
            };
            assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{script}");
        }
    }

    #[test]
    fn path_filters() {
        let t = templates();
        let ctx = context! { p => "src/a/lib.rs" };
        let out = t
            .render(
                "{{ p|basename }} {{ p|dirname }} {{ p|stem }} {{ p|ext }}",
                false,
                &ctx,
            )
            .unwrap();
        assert_eq!(out.text, "lib.rs src/a lib rs");
        let out = t.render("{{ p|shell_quote }}", true, &ctx).unwrap();
        assert_eq!(out.text, "src/a/lib.rs");
    }

    #[test]
    fn undefined_names_are_errors_that_name_the_variable() {
        let t = templates();
        let ctx = context! { vars => context! { style => "x" } };
        let err = t.render("a\n{{ vars.styel }}", false, &ctx).unwrap_err();
        assert_eq!(err.kind, TemplateErrorKind::Undefined);
        assert_eq!(err.message, "undefined template variable `vars.styel`");
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn syntax_errors_have_lines() {
        let t = templates();
        let err = t.check_syntax("ok\n{{ oops ").unwrap_err();
        assert_eq!(err.kind, TemplateErrorKind::Syntax);
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn read_file_records_its_input() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let t = Templates::new(dir.path());
        let out = t
            .render("{{ 'notes.txt'|read_file }}", false, &context! {})
            .unwrap();
        assert_eq!(out.text, "hello");
        assert!(out.read_files.contains("notes.txt"));
    }
}
