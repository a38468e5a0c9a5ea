//! The `ped` command line: `run`, `simulate`, `check`, `scan`, `plan`.

mod cli;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    cli::logs::init_logs(&cli.log_format);
    cli::dispatch(cli.cmd).await
}
