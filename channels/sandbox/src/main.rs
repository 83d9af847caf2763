//! `sandbox`: local stand-ins for WeChat Pay, Alipay and UnionPay. See the crate README.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sandbox::serve::{self, Which};

#[derive(Debug, Parser)]
#[command(
    name = "sandbox",
    about = "Local stand-ins for WeChat Pay, Alipay and UnionPay"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate fresh key material for all three platforms into DIR (overwriting).
    Keygen {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Serve the WeChat Pay API v3 stand-in.
    Wechat(ServeArgs),
    /// Serve the Alipay gateway stand-in.
    Alipay(ServeArgs),
    /// Serve the UnionPay gateway 5.1.0 stand-in.
    Unionpay(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Listen address, for example 127.0.0.1:8081 (port 0 picks a free port).
    #[arg(long, env = "SANDBOX_LISTEN", default_value = "127.0.0.1:0")]
    listen: String,
    /// The directory `sandbox keygen` wrote.
    #[arg(long, env = "SANDBOX_KEYS_DIR")]
    keys_dir: PathBuf,
    /// Multiplies every callback retry delay (tests use 0.001).
    #[arg(long, env = "SANDBOX_TIME_SCALE", default_value_t = 1.0)]
    time_scale: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sandbox failed");
            eprintln!("sandbox: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let (which, args) = match cli.command {
        Command::Keygen { dir } => {
            sandbox::keyfiles::generate_all(&dir)?;
            println!("keys written to {}", dir.display());
            return Ok(());
        }
        Command::Wechat(args) => (Which::Wechat, args),
        Command::Alipay(args) => (Which::Alipay, args),
        Command::Unionpay(args) => (Which::Unionpay, args),
    };
    let router = serve::build_router(which, &args.keys_dir, args.time_scale)?;
    let (listener, addr) = serve::bind(&args.listen).await?;
    tracing::info!(platform = ?which, %addr, time_scale = args.time_scale, "sandbox listening");
    // Printed on stdout so a parent process can learn the port when it asked for port 0.
    println!("listening on http://{addr}");
    serve::run(listener, router).await?;
    Ok(())
}
