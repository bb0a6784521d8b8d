use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gatehouse::{config::Config, server};

/// Gatehouse: users, organizations, API keys, rate limits, billing, webhooks, audit log and an
/// AI gateway, in one server.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, after_help = Config::help_text())]
struct Cli {
    /// TOML configuration file (every key is listed below; GATEHOUSE_<KEY> variables win over it)
    #[arg(long, short = 'c', global = true, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (the default when no command is given)
    Serve,
    /// Apply the database migrations and exit
    Migrate,
    /// Administration tasks
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Billing tasks
    Billing {
        #[command(subcommand)]
        command: BillingCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BillingCommand {
    /// Close every subscription period that ended at or before TIME and issue its invoice
    /// (running it again issues nothing new)
    ClosePeriod {
        /// Only this organization (id or slug)
        #[arg(long)]
        org: Option<String>,
        /// RFC 3339 time, e.g. 2026-02-01T00:00:00Z (default: now)
        #[arg(long, value_parser = parse_time)]
        at: Option<chrono::DateTime<chrono::Utc>>,
    },
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2026-02-01T00:00:00Z"))
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create a platform admin user
    Create {
        /// The admin's email address
        #[arg(long)]
        email: String,
        /// The admin's password (8–1024 characters, not a common one)
        #[arg(long)]
        password: String,
        /// Display name
        #[arg(long, default_value = "Platform admin")]
        name: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    gatehouse::telemetry::init(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    match runtime.block_on(run(cli.command.unwrap_or(Command::Serve), config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Billing {
            command: BillingCommand::ClosePeriod { org, at },
        } => {
            // The server's state, without a listener or the first-start admin.
            let state = server::build_state(Config {
                bootstrap_admin: false,
                ..config
            })
            .await?;
            let org_id = match org {
                Some(o) => Some(
                    gatehouse::orgs::access::OrgRef::find(&state.db, &o)
                        .await
                        .map_err(|e| anyhow::anyhow!("organization {o:?}: {e}"))?
                        .id,
                ),
                None => None,
            };
            let at = at.unwrap_or_else(chrono::Utc::now);
            let closed = gatehouse::billing::invoices::close_periods(&state, at, org_id.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for i in &closed.issued {
                println!(
                    "issued {} for {} ({} to {}): {} {}",
                    i.invoice_id,
                    i.organization_id,
                    i.period_start,
                    i.period_end,
                    i.amount,
                    i.currency
                );
            }
            println!(
                "{} invoice(s) issued for periods ended by {}",
                closed.issued.len(),
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            Ok(())
        }
        Command::Serve => server::run(config).await,
        Command::Migrate => {
            let db = server::open_database(&config).await?;
            println!("migrations applied ({} database)", db.backend().name());
            Ok(())
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    password,
                    name,
                },
        } => {
            let db = server::open_database(&config).await?;
            let user = gatehouse::auth::users::create(
                &db,
                &gatehouse::events::ActorContext::system(),
                gatehouse::auth::users::NewUser::platform_admin(&email, &name, &password),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created platform admin {} ({})", user.email, user.id);
            Ok(())
        }
    }
}
