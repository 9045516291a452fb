//! Asking before a destructive action.

use std::io::{BufRead, Write};

/// Asks `question` on stderr and reads the answer from stdin. Only called when stdin is a
/// terminal: without one, parsing already refused the command unless `--yes` was given.
pub(crate) fn ask_on_terminal(question: &str) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut stderr = std::io::stderr();
    Ok(ask(question, &mut input, &mut stderr)?)
}

/// Writes `question [y/N] ` to `output` and reads one line: `y` or `yes` (any case) agree;
/// anything else, or the end of input, declines.
fn ask(question: &str, input: &mut impl BufRead, output: &mut impl Write) -> std::io::Result<bool> {
    write!(output, "{question} [y/N] ")?;
    output.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    let answer = answer.trim();
    Ok(answer.eq_ignore_ascii_case("y") || answer.eq_ignore_ascii_case("yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(typed: &str) -> (bool, String) {
        let mut output = Vec::new();
        let agreed = ask("Purge 3 dead letters?", &mut typed.as_bytes(), &mut output).unwrap();
        (agreed, String::from_utf8(output).unwrap())
    }

    #[test]
    fn only_yes_agrees() {
        assert_eq!(
            answer("y\n"),
            (true, "Purge 3 dead letters? [y/N] ".to_owned())
        );
        assert!(answer("YES\n").0);
        assert!(answer(" yes \n").0);
        for typed in ["", "\n", "n\n", "no\n", "yep\n", "sure\n"] {
            assert!(!answer(typed).0, "{typed:?}");
        }
    }
}
