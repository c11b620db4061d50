//! The `bindgate` command line: run | check | thumbprint | dev-certs.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "bindgate",
    version,
    about = "Sidecar proxy enforcing initial access tokens and certificate-bound tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the configuration file.
    Run {
        #[arg(short, long, default_value = "proxy.yaml")]
        config: PathBuf,
    },
    /// Validate the configuration file: exit 0, or print every problem and exit 1.
    Check {
        #[arg(short, long, default_value = "proxy.yaml")]
        config: PathBuf,
    },
    /// Print the certificate's x5t#S256 (RFC 8705): base64url SHA-256 of its DER.
    Thumbprint { cert: PathBuf },
    /// Write a development CA, server certificate, client certificates and tokens into DIR.
    DevCerts {
        dir: PathBuf,
        /// Replace the files even when a complete set is already there.
        #[arg(long)]
        force: bool,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BINDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging();
            let config = match bindgate::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            };
            match bindgate::serve::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bindgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match bindgate::config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Thumbprint { cert } => {
            let pem = match std::fs::read(&cert) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("bindgate: cannot read {}: {e}", cert.display());
                    return ExitCode::FAILURE;
                }
            };
            match bindgate::certificate::thumbprint_of_pem(&pem) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bindgate: {}: {e}", cert.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::DevCerts { dir, force } => {
            if !force && bindgate::devcerts::complete(&dir) {
                println!(
                    "{}: development certificates already present (use --force to replace them)",
                    dir.display()
                );
                return ExitCode::SUCCESS;
            }
            match bindgate::devcerts::generate(&dir) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bindgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
