//! `musterd`: parse, set up logging and the runtime, dispatch, map the result to an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = musterd::cli::Cli::parse();
    musterd::logging::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("musterd: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(musterd::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("musterd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
