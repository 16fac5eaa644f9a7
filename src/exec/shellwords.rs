//! Decides whether a `run:` script can be executed directly, without a shell.
//!
//! Spawning `sh -c` costs a second exec per task (~0.35 ms here), which
//! dominates workflows of many tiny tasks. [`parse`] accepts only the subset of
//! POSIX shell whose meaning is fixed by the characters alone: plain words,
//! single and double quotes, backslash escapes, and the simple redirections
//! `<`, `>`, `>>` and `2>&1`. Anything that needs the shell to expand, look up
//! or interpret something (parameters, command substitution, globs, tildes,
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
    let mut iter = tokens.into_iter();
    while let Some(token) = iter.next() {
        match token {
            Token::Word(word) => argv.push(word),
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
    })
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

    macro_rules! finish_word {
        () => {
            if in_word {
                tokens.push(Token::Word(std::mem::take(&mut word)));
                in_word = false;
                quoted = false;
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
            other if needs_shell(other) => return None,
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        tokens.push(Token::Word(word));
    }
    Some(tokens)
}

#[cfg(test)]
mod tests;
