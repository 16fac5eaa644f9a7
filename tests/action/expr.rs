//! A small evaluator of GitHub Actions expressions, enough for what
//! `action.yml` uses: literals, context paths (`inputs.x`,
//! `steps.id.outputs.x`, `github.sha`, `runner.temp`, `env.X`), `!`, `==`,
//! `!=`, `&&`, `||`, parentheses, and the functions `always()`, `success()`,
//! `failure()`, `cancelled()`, `contains()`, `startsWith()`, `endsWith()`.
//!
//! It follows GitHub's semantics where they matter to the action: `&&` and
//! `||` return one of their operands (so `a || b` picks the first non-empty
//! value), comparisons of different types coerce to numbers, strings compare
//! case-insensitively, a missing property is `null`, and an `if:` without a
//! status function means `success() && (...)`. Anything else is an error, so
//! a new construct in `action.yml` makes the harness fail loudly instead of
//! guessing.

use std::collections::BTreeMap;

/// A value of the expression language. Context objects have lowercase keys
/// (GitHub's contexts are case-insensitive).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Object(BTreeMap<String, Value>),
}

impl Value {
    /// An object from string pairs (keys are lowercased).
    pub fn object<K: AsRef<str>, V: Into<Value>>(pairs: impl IntoIterator<Item = (K, V)>) -> Value {
        Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_ref().to_lowercase(), v.into()))
                .collect(),
        )
    }

    fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => *n != 0.0 && !n.is_nan(),
            Value::String(s) => !s.is_empty(),
            Value::Object(_) => true,
        }
    }

    fn number(&self) -> f64 {
        match self {
            Value::Null => 0.0,
            Value::Bool(b) => f64::from(u8::from(*b)),
            Value::Number(n) => *n,
            Value::String(s) if s.trim().is_empty() => 0.0,
            Value::String(s) => s.trim().parse().unwrap_or(f64::NAN),
            Value::Object(_) => f64::NAN,
        }
    }

    fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::String(a), Value::String(b)) => a.to_lowercase() == b.to_lowercase(),
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Object(_), _) | (_, Value::Object(_)) => std::ptr::eq(self, other),
            _ => self.number() == other.number(),
        }
    }

    /// The text a value becomes when interpolated into a string.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            #[expect(
                clippy::cast_possible_truncation,
                reason = "only integral values in range are printed without a fraction"
            )]
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Object(_) => "Object".to_string(),
        }
    }

    fn property(&self, name: &str) -> Value {
        match self {
            Value::Object(map) => map
                .get(&name.to_lowercase())
                .cloned()
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Value {
        Value::String(text.to_string())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::String(text)
    }
}

impl From<&String> for Value {
    fn from(text: &String) -> Value {
        Value::String(text.clone())
    }
}

/// What the status functions answer: whether an earlier step failed.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobStatus {
    pub failed: bool,
}

/// The contexts (`inputs`, `steps`, `github`, `runner`, `env`) as one object.
pub struct Context<'a> {
    pub root: &'a Value,
    pub status: JobStatus,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(f64),
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Not,
    Eq,
    Ne,
    And,
    Or,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '.' => {
                tokens.push(Token::Dot);
                i += 1;
            }
            '(' | ')' | '[' | ']' | ',' => {
                tokens.push(match c {
                    '(' => Token::LParen,
                    ')' => Token::RParen,
                    '[' => Token::LBracket,
                    ']' => Token::RBracket,
                    _ => Token::Comma,
                });
                i += 1;
            }
            '!' if next == Some('=') => {
                tokens.push(Token::Ne);
                i += 2;
            }
            '!' => {
                tokens.push(Token::Not);
                i += 1;
            }
            '=' if next == Some('=') => {
                tokens.push(Token::Eq);
                i += 2;
            }
            '&' if next == Some('&') => {
                tokens.push(Token::And);
                i += 2;
            }
            '|' if next == Some('|') => {
                tokens.push(Token::Or);
                i += 2;
            }
            '\'' => {
                // A quote inside a string is written twice.
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".to_string()),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            text.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            text.push(other);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Str(text));
            }
            c if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let literal: String = chars[start..i].iter().collect();
                tokens.push(Token::Num(
                    literal
                        .parse()
                        .map_err(|_| format!("bad number `{literal}`"))?,
                ));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character `{other}`")),
        }
    }
    Ok(tokens)
}

#[derive(Debug)]
enum Expr {
    Literal(Value),
    Context(String),
    Property(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
    Not(Box<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn expect(&mut self, token: &Token) -> Result<(), String> {
        match self.next() {
            Some(found) if &found == token => Ok(()),
            found => Err(format!("expected {token:?}, found {found:?}")),
        }
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.position += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.comparison()?;
        while self.peek() == Some(&Token::And) {
            self.position += 1;
            left = Expr::And(Box::new(left), Box::new(self.comparison()?));
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Expr, String> {
        let left = self.unary()?;
        match self.peek() {
            Some(Token::Eq) => {
                self.position += 1;
                Ok(Expr::Eq(Box::new(left), Box::new(self.unary()?)))
            }
            Some(Token::Ne) => {
                self.position += 1;
                Ok(Expr::Ne(Box::new(left), Box::new(self.unary()?)))
            }
            _ => Ok(left),
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek() == Some(&Token::Not) {
            self.position += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut expr = match self.next() {
            Some(Token::Str(text)) => Expr::Literal(Value::String(text)),
            Some(Token::Num(n)) => Expr::Literal(Value::Number(n)),
            Some(Token::LParen) => {
                let inner = self.or()?;
                self.expect(&Token::RParen)?;
                inner
            }
            Some(Token::Ident(name)) => match name.as_str() {
                "true" => Expr::Literal(Value::Bool(true)),
                "false" => Expr::Literal(Value::Bool(false)),
                "null" => Expr::Literal(Value::Null),
                _ if self.peek() == Some(&Token::LParen) => {
                    self.position += 1;
                    let mut arguments = Vec::new();
                    if self.peek() != Some(&Token::RParen) {
                        loop {
                            arguments.push(self.or()?);
                            if self.peek() == Some(&Token::Comma) {
                                self.position += 1;
                            } else {
                                break;
                            }
                        }
                    }
                    self.expect(&Token::RParen)?;
                    Expr::Call(name.to_lowercase(), arguments)
                }
                _ => Expr::Context(name.to_lowercase()),
            },
            other => return Err(format!("unexpected {other:?}")),
        };
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.position += 1;
                    match self.next() {
                        Some(Token::Ident(name)) => expr = Expr::Property(Box::new(expr), name),
                        other => {
                            return Err(format!(
                                "expected a property name after `.`, found {other:?}"
                            ))
                        }
                    }
                }
                Some(Token::LBracket) => {
                    self.position += 1;
                    let index = self.or()?;
                    self.expect(&Token::RBracket)?;
                    expr = Expr::Index(Box::new(expr), Box::new(index));
                }
                _ => return Ok(expr),
            }
        }
    }
}

fn eval(expr: &Expr, context: &Context<'_>) -> Result<Value, String> {
    Ok(match expr {
        Expr::Literal(value) => value.clone(),
        Expr::Context(name) => match context.root.property(name) {
            Value::Null
                if !matches!(
                    name.as_str(),
                    "inputs" | "steps" | "github" | "runner" | "env"
                ) =>
            {
                return Err(format!("unknown context `{name}`"));
            }
            value => value,
        },
        Expr::Property(object, name) => eval(object, context)?.property(name),
        Expr::Index(object, index) => {
            eval(object, context)?.property(&eval(index, context)?.to_text())
        }
        Expr::Not(inner) => Value::Bool(!eval(inner, context)?.truthy()),
        Expr::Eq(a, b) => Value::Bool(eval(a, context)?.loose_eq(&eval(b, context)?)),
        Expr::Ne(a, b) => Value::Bool(!eval(a, context)?.loose_eq(&eval(b, context)?)),
        Expr::And(a, b) => {
            let left = eval(a, context)?;
            if left.truthy() {
                eval(b, context)?
            } else {
                left
            }
        }
        Expr::Or(a, b) => {
            let left = eval(a, context)?;
            if left.truthy() {
                left
            } else {
                eval(b, context)?
            }
        }
        Expr::Call(name, arguments) => {
            let values = arguments
                .iter()
                .map(|a| eval(a, context))
                .collect::<Result<Vec<_>, _>>()?;
            let text = |i: usize| {
                values
                    .get(i)
                    .map(|v| v.to_text().to_lowercase())
                    .unwrap_or_default()
            };
            match (name.as_str(), values.len()) {
                ("always", 0) => Value::Bool(true),
                ("success", 0) => Value::Bool(!context.status.failed),
                ("failure", 0) => Value::Bool(context.status.failed),
                ("cancelled", 0) => Value::Bool(false),
                ("contains", 2) => Value::Bool(text(0).contains(&text(1))),
                ("startswith", 2) => Value::Bool(text(0).starts_with(&text(1))),
                ("endswith", 2) => Value::Bool(text(0).ends_with(&text(1))),
                _ => {
                    return Err(format!(
                        "unsupported function `{name}` with {} arguments",
                        values.len()
                    ))
                }
            }
        }
    })
}

/// Evaluates one expression (the text between `${{` and `}}`).
pub fn evaluate(text: &str, context: &Context<'_>) -> Result<Value, String> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        position: 0,
    };
    let expr = parser.or()?;
    if parser.position != parser.tokens.len() {
        return Err(format!("trailing tokens in `{text}`"));
    }
    eval(&expr, context).map_err(|e| format!("{e} in `{text}`"))
}

/// Splits a string into literal text and `${{ }}` expressions.
fn segments(text: &str) -> Result<Vec<(bool, &str)>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push((false, &rest[..start]));
        let body = &rest[start + 3..];
        // The closing braces, skipping over string literals.
        let mut in_string = false;
        let mut end = None;
        let bytes = body.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\'' => in_string = !in_string,
                b'}' if !in_string && bytes.get(i + 1) == Some(&b'}') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        let end = end.ok_or_else(|| format!("unterminated `${{{{` in `{text}`"))?;
        out.push((true, &body[..end]));
        rest = &body[end + 2..];
    }
    out.push((false, rest));
    Ok(out)
}

/// Replaces every `${{ expr }}` in `text` by the text of its value.
pub fn interpolate(text: &str, context: &Context<'_>) -> Result<String, String> {
    let mut out = String::new();
    for (is_expression, part) in segments(text)? {
        if is_expression {
            out.push_str(&evaluate(part, context)?.to_text());
        } else {
            out.push_str(part);
        }
    }
    Ok(out)
}

/// Evaluates a step's `if:`: with or without `${{ }}`, and implicitly
/// `success() && (...)` unless it calls a status function.
pub fn condition(text: &str, context: &Context<'_>) -> Result<bool, String> {
    let trimmed = text.trim();
    let inner = match segments(trimmed)?.as_slice() {
        [(false, ""), (true, expression), (false, "")] => (*expression).to_string(),
        _ => trimmed.to_string(),
    };
    let lower = inner.to_lowercase();
    let has_status = ["always(", "success(", "failure(", "cancelled("]
        .iter()
        .any(|f| lower.contains(f));
    let full = if has_status {
        inner
    } else {
        format!("success() && ({inner})")
    };
    Ok(evaluate(&full, context)?.truthy())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Value {
        Value::object([
            (
                "inputs",
                Value::object([("cache", "true"), ("pr-base", ""), ("workflow", "lint")]),
            ),
            (
                "github",
                Value::object([("head_ref", ""), ("ref_name", "main"), ("sha", "abc")]),
            ),
            (
                "steps",
                Value::object([(
                    "run",
                    Value::object([("outputs", Value::object([("run-id", "r1")]))]),
                )]),
            ),
        ])
    }

    fn eval_text(text: &str, failed: bool) -> Value {
        let root = root();
        evaluate(
            text,
            &Context {
                root: &root,
                status: JobStatus { failed },
            },
        )
        .unwrap()
    }

    #[test]
    fn expressions_follow_github_semantics() {
        assert_eq!(
            eval_text("inputs.cache == 'TRUE'", false),
            Value::Bool(true)
        );
        assert_eq!(
            eval_text(
                "inputs.pr-base || github.head_ref || github.ref_name",
                false
            ),
            Value::from("main")
        );
        assert_eq!(
            eval_text("steps.run.outputs.run-id != ''", false),
            Value::Bool(true)
        );
        assert_eq!(eval_text("steps.nothing.outputs.x", false), Value::Null);
        assert_eq!(
            eval_text("always() && !(inputs.cache == 'false')", true),
            Value::Bool(true)
        );
        assert_eq!(eval_text("inputs['workflow']", false), Value::from("lint"));
        assert_eq!(eval_text("'it''s'", false), Value::from("it's"));
        let root = root();
        let context = Context {
            root: &root,
            status: JobStatus { failed: true },
        };
        assert!(
            !condition("inputs.cache == 'true'", &context).unwrap(),
            "no status function means success() &&"
        );
        assert!(condition("${{ always() && inputs.cache == 'true' }}", &context).unwrap());
        assert!(
            evaluate("secrets.X", &context).is_err(),
            "an unknown context is an error"
        );
        assert!(
            evaluate("hashFiles('x')", &context).is_err(),
            "an unsupported function is an error"
        );
        assert_eq!(
            interpolate("a-${{ github.sha }}-${{ inputs.workflow }}", &context).unwrap(),
            "a-abc-lint"
        );
    }
}
