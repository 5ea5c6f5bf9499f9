//! `musterd`: parse, set up logging and the runtime, dispatch, map the result to an exit code.

use clap::Parser;

/// mimalloc, not glibc's malloc: an enrollment allocates and frees a few hundred small buffers
/// (TLS records, HTTP bodies, JSON, certificates), and glibc's allocator took 9 % of musterd's
/// CPU samples doing it (perf, 100 installers in flight). With mimalloc (2026-12-03): 4.541 to
/// 4.559 M instructions per enrollment instead of 4.644 to 4.664 M, server CPU 4 to 5 % less
/// (two A/B runs of 7 rounds), peak RSS 28 to 30 MiB at 100 in flight instead of 19, 89.5 MiB
/// with 10,000 in flight instead of 83.4.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // On a worker, not on this thread: `block_on` polls its future here, so the accept loop
    // would wake this thread for every connection and hand each to a worker.
    match rt.block_on(rt.spawn(musterd::cli::run(cli))) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("musterd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
        // The task panicked (its message is already on stderr) or the runtime shut down.
        Err(e) => {
            eprintln!("musterd: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
