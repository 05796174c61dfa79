//! `sfb completions`: shell completion scripts.

use super::*;

pub(crate) fn completions(shell: clap_complete::Shell) -> AnyResult {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sfb", &mut buf);
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}
