//! Decides whether a `run:` script can be executed directly, without a shell.
//!
//! Spawning `sh -c` costs a second exec per task (~0.35 ms here), which
//! dominates workflows of many tiny tasks. [`parse`] accepts only the subset of
//! POSIX shell whose meaning is fixed by the characters alone: plain words,
//! single and double quotes, backslash escapes, and the simple redirections
//! `<`, `>`, `>>` and `2>&1`, and one kind of pathname expansion: an
//! unquoted argument whose last component holds `*` (`out/*.txt`), which
//! the runner expands as sh would (see [`DirectCommand::globs`]). Anything
//! else that needs the shell to expand, look up
//! or interpret something (parameters, command substitution, other globs, tildes,
//! braces, assignments, operators, comments, keywords, builtins) returns `None`
//! and the caller falls back to `sh -c`. It never guesses: a false `None` only
//! costs speed, a false `Some` would change what the user's command means.

use std::path::PathBuf;

/// A script reduced to one exec: argv plus the redirections `sh` would apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectCommand {
    /// The words after quote removal; `argv[0]` is the program as written.
    pub argv: Vec<String>,
    /// `< FILE`, relative to the task's working directory.
    pub stdin: Option<PathBuf>,
    /// `> FILE` (append = false) or `>> FILE` (append = true).
    pub stdout: Option<(PathBuf, bool)>,
    /// stderr goes wherever stdout finally goes (`> FILE 2>&1`). When false,
    /// stderr goes to the task log (this also covers `2>&1 > FILE`, where sh
    /// duplicates stderr onto the log before stdout is redirected).
    pub stderr_to_stdout: bool,
    /// Indexes into `argv` of words that are pathname patterns: unquoted,
    /// `*` the only wildcard, and only in the last component, which does
    /// not start with `.` (`out/*.txt`, `*.md`). The runner replaces each
    /// with the matching names in byte order, or leaves it as written when
    /// nothing matches — what sh does — and runs `sh -c` instead when it
    /// cannot be sure to match sh (see `exec::local`).
    pub globs: Vec<usize>,
}

/// Shell builtins and reserved words of dash and bash. A command named like
/// one of these would run the builtin under `sh`, whose behaviour differs
/// from the binary of the same name (`echo -e`, `pwd`, `kill`, `true --help`),
/// so such scripts always go through the shell. `true` and `false` without
/// arguments behave identically either way and are allowed (see [`parse`]).
const SHELL_ONLY_NAMES: &[&str] = &[
    "!",
    ".",
    ":",
    "[",
    "[[",
    "]]",
    "{",
    "}",
    "alias",
    "bg",
    "bind",
    "break",
    "builtin",
    "caller",
    "case",
    "cd",
    "coproc",
    "command",
    "compgen",
    "complete",
    "compopt",
    "continue",
    "declare",
    "dirs",
    "disown",
    "do",
    "done",
    "echo",
    "elif",
    "else",
    "enable",
    "esac",
    "eval",
    "exec",
    "exit",
    "export",
    "false",
    "fc",
    "fg",
    "fi",
    "for",
    "function",
    "getopts",
    "hash",
    "help",
    "history",
    "if",
    "in",
    "jobs",
    "kill",
    "let",
    "local",
    "logout",
    "mapfile",
    "popd",
    "printf",
    "pushd",
    "pwd",
    "read",
    "readarray",
    "readonly",
    "return",
    "select",
    "set",
    "shift",
    "shopt",
    "source",
    "suspend",
    "test",
    "then",
    "time",
    "times",
    "trap",
    "true",
    "type",
    "typeset",
    "ulimit",
    "umask",
    "unalias",
    "unset",
    "until",
    "wait",
    "while",
];

/// Characters that, unquoted, make the shell do something other than build
/// a literal word. `<` and `>` are handled separately as redirections; `=` is
/// only rejected in the command name (an assignment prefix).
fn needs_shell(c: char) -> bool {
    matches!(
        c,
        '$' | '`'
            | '*'
            | '?'
            | '['
            | ']'
            | '~'
            | ';'
            | '&'
            | '|'
            | '('
            | ')'
            | '{'
            | '}'
            | '!'
            | '#'
            | '\n'
            | '\r'
    )
}

/// One lexical unit of the accepted subset.
#[derive(Debug)]
enum Token {
    Word(String),
    /// A word that is a pathname pattern (see [`DirectCommand::globs`]).
    Glob(String),
    /// `<`
    In,
    /// `>` or `>>` (true)
    Out(bool),
    /// `2>&1`
    ErrToOut,
}

/// Parses `script` into a [`DirectCommand`] when executing it directly is
/// exactly equivalent to `sh -c script`; `None` otherwise.
#[must_use]
pub fn parse(script: &str) -> Option<DirectCommand> {
    // YAML block scalars (`run: |`) end in a newline; blank lines around a
    // single command change nothing in sh. A continuation (`\` before the
    // trimmed newline) is left to fail below rather than be reinterpreted.
    let script = script.trim_matches('\n');
    let tokens = tokenize(script)?;
    let mut argv = Vec::new();
    let mut stdin = None;
    let mut stdout: Option<(PathBuf, bool)> = None;
    // Where stderr points, in redirection order: false = the log, true = the
    // stdout file. Only one stdout file is representable.
    let mut stderr_to_stdout = false;
    let mut globs = Vec::new();
    let mut iter = tokens.into_iter();
    while let Some(token) = iter.next() {
        match token {
            Token::Word(word) => argv.push(word),
            // The command name itself is never expanded here.
            Token::Glob(word) if !argv.is_empty() => {
                globs.push(argv.len());
                argv.push(word);
            }
            Token::Glob(_) => return None,
            Token::In => {
                let Some(Token::Word(target)) = iter.next() else {
                    return None;
                };
                if stdin.is_some() || target.is_empty() {
                    return None;
                }
                stdin = Some(PathBuf::from(target));
            }
            Token::Out(append) => {
                let Some(Token::Word(target)) = iter.next() else {
                    return None;
                };
                // A second stdout redirection would create the first file
                // too, and `> a 2>&1 > b` splits the streams: leave both to sh.
                if stdout.is_some() || target.is_empty() {
                    return None;
                }
                stdout = Some((PathBuf::from(target), append));
            }
            Token::ErrToOut => stderr_to_stdout = stdout.is_some(),
        }
    }
    let program = argv.first()?;
    if program.is_empty() || program.contains('=') {
        return None;
    }
    let is_trivial_builtin = (program == "true" || program == "false") && argv.len() == 1;
    if SHELL_ONLY_NAMES.contains(&program.as_str()) && !is_trivial_builtin {
        return None;
    }
    Some(DirectCommand {
        argv,
        stdin,
        stdout,
        stderr_to_stdout,
        globs,
    })
}

/// A finished word: `quoted` when any part of it was, `starred` when it
/// holds an unquoted `*`. `None` for a wildcard beside quoted parts or in a
/// pattern of another kind: left to sh.
fn word_token(text: String, quoted: bool, starred: bool) -> Option<Token> {
    if !starred {
        Some(Token::Word(text))
    } else if !quoted && simple_pattern(&text) {
        Some(Token::Glob(text))
    } else {
        None
    }
}

/// Whether `word` (unquoted, holding `*`) is a pattern of the supported
/// kind: wildcards only in a last component that does not start with `.`
/// (sh matches hidden names only then, and `.*` would match `.` and `..`).
fn simple_pattern(word: &str) -> bool {
    let (dir, name) = word.rsplit_once('/').unwrap_or(("", word));
    !dir.contains('*') && !name.is_empty() && !name.starts_with('.')
}

/// Splits the script into words and redirection operators, applying POSIX
/// quote removal. Returns `None` at the first construct outside the subset.
fn tokenize(script: &str) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = script.chars().peekable();
    // The word being built, and whether any part of it was quoted (a quoted
    // empty string `''` is still a word; a quoted `2` is not an fd number).
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    // The word holds an unquoted `*`.
    let mut starred = false;

    macro_rules! finish_word {
        () => {
            if in_word {
                tokens.push(word_token(std::mem::take(&mut word), quoted, starred)?);
                in_word = false;
                quoted = false;
                starred = false;
            }
        };
    }

    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => finish_word!(),
            '\'' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        other => word.push(other),
                    }
                }
            }
            '"' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' => return None,
                        '\\' => match chars.next()? {
                            // Inside double quotes a backslash escapes only
                            // these; before anything else it stays literal.
                            escaped @ ('$' | '`' | '"' | '\\') => word.push(escaped),
                            '\n' => {}
                            other => {
                                word.push('\\');
                                word.push(other);
                            }
                        },
                        other => word.push(other),
                    }
                }
            }
            '\\' => match chars.next()? {
                // Line continuation: removed entirely.
                '\n' => {}
                escaped => {
                    in_word = true;
                    quoted = true;
                    word.push(escaped);
                }
            },
            '<' => {
                if in_word || matches!(chars.peek(), Some('<' | '&' | '>' | '|')) {
                    // `2<`, `<<`, `<&`, `<>` are outside the subset.
                    return None;
                }
                tokens.push(Token::In);
            }
            '>' => {
                let is_stderr = in_word && !quoted && word == "2";
                if in_word && !is_stderr {
                    // `1>`, `foo>` (attached word ends first, but keep it simple).
                    return None;
                }
                if is_stderr {
                    // Only `2>&1` followed by a blank or the end is accepted.
                    if chars.next()? != '&' || chars.next()? != '1' {
                        return None;
                    }
                    if !matches!(chars.peek(), None | Some(' ' | '\t')) {
                        return None;
                    }
                    word.clear();
                    in_word = false;
                    tokens.push(Token::ErrToOut);
                } else if chars.peek() == Some(&'>') {
                    chars.next();
                    if matches!(chars.peek(), Some('>' | '&' | '|' | '<')) {
                        return None;
                    }
                    tokens.push(Token::Out(true));
                } else {
                    if matches!(chars.peek(), Some('&' | '|' | '<')) {
                        return None;
                    }
                    tokens.push(Token::Out(false));
                }
            }
            '*' => {
                in_word = true;
                starred = true;
                word.push('*');
            }
            other if needs_shell(other) => return None,
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        tokens.push(word_token(word, quoted, starred)?);
    }
    Some(tokens)
}

#[cfg(test)]
mod tests;
