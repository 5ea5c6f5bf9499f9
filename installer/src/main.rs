//! `muster`: parse, dispatch one subcommand, map the result to a documented exit code.

use clap::Parser;
use muster::cli::{Cli, Cmd, Output, TokenCmd};
use muster::exit::{Exit, Failure};
use std::process::ExitCode;

/// A token given as `--roles-token` must not stay in the argument list (`ps` shows it to every
/// user): re-execute without it, handing it over in the environment, which only this user
/// and root can read.
fn scrub_argv() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some((clean, token)) = muster::cli::scrub_token_args(&args) {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let err = std::process::Command::new(exe)
            .arg0(clean.first().cloned().unwrap_or_else(|| "muster".into()))
            .args(clean.iter().skip(1))
            .env("MUSTER_ROLES_TOKEN", token)
            .exec();
        eprintln!("muster: could not re-execute to hide the token from the argument list: {err}");
        std::process::exit(Exit::Other.code().into());
    }
}

fn main() -> ExitCode {
    scrub_argv();
    let cli = Cli::parse();
    if let Cmd::Generate { out_dir } = &cli.cmd {
        use clap::CommandFactory;
        return match muster_protocol::cli_docs::generate(Cli::command(), out_dir) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("muster: writing into {}: {e}", out_dir.display());
                ExitCode::from(Exit::LocalWrite.code())
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muster: starting the runtime: {e}");
            return ExitCode::from(Exit::Other.code());
        }
    };
    let (output, result) = rt.block_on(async {
        match cli.cmd {
            Cmd::Install(args) => match args.settings() {
                Ok(s) => {
                    let out = s.output;
                    (
                        out,
                        muster::install::run(s).await.and_then(|o| {
                            serde_json::to_value(o)
                                .map_err(|e| Failure::new(Exit::Other, e.to_string()))
                        }),
                    )
                }
                Err(e) => (args.output.unwrap_or(Output::Text), Err(e)),
            },
            Cmd::Status(a) => (a.output, muster::status::status(&a)),
            Cmd::Token {
                cmd: TokenCmd::Inspect { token, output },
            } => (output, muster::inspect::inspect(&token, output)),
            Cmd::Agent {
                common,
                interval,
                count,
            } => (
                common.output,
                muster::agent::agent(&common, interval, count).await,
            ),
            Cmd::Renew(a) => (a.output, muster::renew::renew(&a).await),
            Cmd::Leave { common, purge } => {
                (common.output, muster::leave::leave(&common, purge).await)
            }
            Cmd::Admin { conn, cmd } => {
                (conn.output, muster::admin::commands::run(&conn, &cmd).await)
            }
            Cmd::Generate { .. } => (Output::Text, Ok(serde_json::Value::Null)),
        }
    });
    match result {
        Ok(v) => {
            if output == Output::Json {
                println!("{v}");
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({"result": "error", "error": f.exit.name(), "exit_code": f.exit.code(), "code": f.code, "message": f.message})
                );
            }
            eprintln!("muster: error: {}", f.message);
            ExitCode::from(f.exit.code())
        }
    }
}
