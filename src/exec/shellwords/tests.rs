//! What the parser accepts and how; the behavioural equivalence with `sh -c`
//! is proven by running both, in `exec::local::tests::direct_exec_matches_sh`.

use super::*;

fn argv(script: &str) -> Vec<String> {
    parse(script)
        .unwrap_or_else(|| panic!("{script:?} should be direct"))
        .argv
}

#[test]
fn words_quotes_and_escapes() {
    assert_eq!(argv("ls -l"), ["ls", "-l"]);
    assert_eq!(argv("  cat   'a b'\t\"c d\"  "), ["cat", "a b", "c d"]);
    assert_eq!(argv("p '' \"\" ''\"\""), ["p", "", "", ""]);
    assert_eq!(argv("p a'b'\"c\"d"), ["p", "abcd"]);
    assert_eq!(argv(r"p a\ b \' \\"), ["p", "a b", "'", "\\"]);
    assert_eq!(argv(r#"p "\$ \` \" \\ \a""#), ["p", "$ ` \" \\ \\a"]);
    assert_eq!(argv("p 'lit $x `y` \\n'"), ["p", "lit $x `y` \\n"]);
    assert_eq!(argv("p \"a\\\nb\" c\\\nd"), ["p", "ab", "cd"]);
    assert_eq!(argv("p 'multi\nline'"), ["p", "multi\nline"]);
    assert_eq!(argv("p héllo 日本"), ["p", "héllo", "日本"]);
    assert_eq!(argv("make CC=gcc -j4"), ["make", "CC=gcc", "-j4"]);
    assert_eq!(argv("true"), ["true"]);
    assert_eq!(argv("\ncargo test\n\n"), ["cargo", "test"]);
}

#[test]
fn redirections() {
    let parsed = parse("cat < in.txt > 'out file' 2>&1").expect("direct");
    assert_eq!(parsed.argv, ["cat"]);
    assert_eq!(parsed.stdin, Some(PathBuf::from("in.txt")));
    assert_eq!(parsed.stdout, Some((PathBuf::from("out file"), false)));
    assert!(parsed.stderr_to_stdout);

    let parsed = parse("cmd 2>&1 >>log").expect("direct");
    assert_eq!(parsed.stdout, Some((PathBuf::from("log"), true)));
    assert!(
        !parsed.stderr_to_stdout,
        "2>&1 before > points stderr at the log"
    );

    let parsed = parse("cmd 2>&1").expect("direct");
    assert_eq!(parsed.stdout, None);
    assert!(!parsed.stderr_to_stdout);
}

#[test]
fn star_patterns_are_expanded_by_the_runner() {
    let parsed = parse("cat out/*.txt > all.txt").expect("direct");
    assert_eq!(parsed.argv, ["cat", "out/*.txt"]);
    assert_eq!(parsed.globs, [1]);
    assert_eq!(parsed.stdout, Some((PathBuf::from("all.txt"), false)));
    let parsed = parse("wc -l *.md /abs/a*b*c 'lit*'").expect("direct");
    assert_eq!(parsed.argv, ["wc", "-l", "*.md", "/abs/a*b*c", "lit*"]);
    assert_eq!(parsed.globs, [2, 3], "a quoted star is a literal word");
    assert!(parse("cat a.txt").expect("direct").globs.is_empty());
    for quoted in ["ls '*'.txt", "ls \\*.txt", "ls \"*.txt\""] {
        let parsed = parse(quoted).expect("direct");
        assert_eq!(parsed.argv, ["ls", "*.txt"], "{quoted:?}");
        assert!(
            parsed.globs.is_empty(),
            "{quoted:?}: a quoted star is literal"
        );
    }
}

#[test]
fn scripts_that_need_a_shell() {
    for script in [
        "",
        "   ",
        "echo hi",
        "printf x",
        "test -f x",
        "[ -f x ]",
        "cd /tmp",
        "exec ls",
        "true x",
        "false --help",
        "pwd",
        "kill 1",
        "*.sh",
        "./*.sh x",
        "ls *.txt > *.out",
        "ls < *.txt",
        "ls */x.txt",
        "ls a/*/b*",
        "ls .*",
        "ls src/.*rc",
        "ls src/*/",
        "ls *'.txt'",
        "ls \"a\"*",
        "ls a*?",
        "ls a?",
        "ls [ab]",
        "ls ~",
        "ls ~/x",
        "echo {a,b}",
        "cat $HOME",
        "cat \"$HOME\"",
        "cat ${HOME}",
        "cat `pwd`",
        "cat \"`pwd`\"",
        "cat $(pwd)",
        "a; b",
        "a && b",
        "a || b",
        "a | b",
        "a &",
        "(a)",
        "{ a; }",
        "! a",
        "FOO=1 env",
        "'FOO=1' env",
        "cat <<EOF",
        "cat <&3",
        "cat <> f",
        "ls 2> err",
        "ls 1> out",
        "ls >& out",
        "ls &> out",
        "ls >| out",
        "ls > a > b",
        "ls > a 2>&1 > b",
        "ls < a < b",
        "ls >",
        "ls > ''",
        "ls 2>&1x",
        "ls 2>&2",
        "ls # comment",
        "if true; then :; fi",
        "for x in a; do b; done",
        "ls 'unterminated",
        "ls \"unterminated",
        "ls \\",
        "ls\nls",
        "ls \\\n",
        "\n\n",
        "ls\r",
        "ls>out",
        "''",
        "\"\" x",
    ] {
        assert_eq!(parse(script), None, "{script:?} must go through sh");
    }
}
