//! `payd`: reads its settings, sets up logging, applies migrations and serves until SIGTERM.
use clap::{Parser, Subcommand};
use payd::config::Settings;
use payd::startup::{Application, shutdown_signal};
use payd::storage::Db;
use payd::telemetry;

#[derive(Parser)]
#[command(
    name = "payd",
    about = "Payment platform core: orders, payments, refunds over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Seal personal fields written in clear (before sealing existed) or under an older data
    /// key with the active key, in batches of one transaction each. Idempotent and resumable:
    /// run it after adding a key, then drop the old key once it reports nothing left.
    Reencrypt {
        /// Rows per transaction.
        #[arg(long, default_value_t = 500)]
        batch: i64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    telemetry::init(&settings.log_format);
    let db = Db::connect_lazy(
        settings.database_url.expose(),
        2,
        std::time::Duration::from_secs(10),
    )?;
    let applied = db.migrate().await?;
    tracing::info!(applied, "migrations up to date");
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => Ok(()),
        Command::Reencrypt { batch } => {
            payd::crypto::install(std::sync::Arc::new(settings.data_keys()?));
            let active = payd::crypto::keys().active_id().to_owned();
            let (refunds, notes, digests) = payd::storage::reseal_all(&db, batch.max(1)).await?;
            println!(
                "re-encrypted under {active}: {refunds} refund reasons, {notes} discrepancy notes; {digests} legacy payer digests rewritten or cleared"
            );
            Ok(())
        }
        Command::Serve => {
            let app = Application::build(&settings).await?;
            tracing::info!(grpc = %app.grpc_addr()?, metrics = %app.metrics_addr()?, "payd listening");
            app.run_until_stopped(shutdown_signal()).await?;
            tracing::info!("payd stopped");
            Ok(())
        }
    }
}
