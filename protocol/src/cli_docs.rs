//! Shell completions (bash, zsh, fish) and man pages (one per command and subcommand), made
//! from a binary's clap definitions so they never drift from its flags. `packaging/build` runs
//! each binary's hidden `generate` command and ships what it writes.

use std::io;
use std::path::{Path, PathBuf};

/// Writes into `dir` the completions of `cmd` (`NAME.bash`, `_NAME`, `NAME.fish`) and its man
/// pages (`NAME.1`, `NAME-SUBCOMMAND.1`, …); the files written.
pub fn generate(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    let mut written = vec![];
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let path = dir.join(file);
        let mut f = std::fs::File::create(&path)?;
        clap_complete::generate(shell, &mut cmd.clone(), &name, &mut f);
        written.push(path);
    }
    clap_mangen::generate_to(cmd, dir)?;
    written.extend(man_pages(dir)?);
    Ok(written)
}

fn man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "1") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}
