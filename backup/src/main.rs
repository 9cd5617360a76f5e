//! `virtguard`: parse the command line, run it, map errors to a message and an exit code
//! (1: the work failed; 2: usage or configuration error: [`virtguard::Error::is_usage`]).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = virtguard::cli::Cli::parse();
    // kube (ring) and the AWS SDK (aws-lc-rs) both link rustls providers: pick one up front.
    virtguard::cluster::install_crypto_provider();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result: anyhow::Result<()> = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(virtguard::cli::run(cli))
                .map_err(anyhow::Error::from)
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 2: usage or configuration error (like clap's own); 1: the work failed.
            match e.downcast_ref::<virtguard::Error>() {
                Some(e) if e.is_usage() => std::process::ExitCode::from(2),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}
