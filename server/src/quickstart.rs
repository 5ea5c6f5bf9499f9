//! `musterd quickstart`: the main job in one command, for a newcomer.

pub async fn run(_dir: Option<std::path::PathBuf>, _port: u16) -> anyhow::Result<()> {
    anyhow::bail!("quickstart: not built yet")
}
