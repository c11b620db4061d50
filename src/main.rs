//! The `bindgate` command line: run | check | thumbprint | dev-certs | dev-token | dev-proof.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: a proxied request makes about a hundred small
/// allocations, most inside Pingora; at a fixed 7 000 req/s it cut bindgate's CPU per request
/// by about 10 % (BENCHMARKS.md, sixth run). Its 2.x series (Cargo.toml: `v2`): a burst of new
/// connections raises RSS no higher than where it settles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// OpenSSL's own allocations (handshake buffers, record layers, keys: ~40 KiB per connection
/// during a handshake) go through mimalloc too, instead of glibc's arenas, which keep what a
/// handshake storm freed: memory after a burst of new connections is reused for Rust's
/// allocations instead of staying resident. Must run before OpenSSL allocates anything.
fn openssl_on_mimalloc() {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        fn CRYPTO_set_mem_functions(
            m: Option<unsafe extern "C" fn(usize, *const c_char, c_int) -> *mut c_void>,
            r: Option<
                unsafe extern "C" fn(*mut c_void, usize, *const c_char, c_int) -> *mut c_void,
            >,
            f: Option<unsafe extern "C" fn(*mut c_void, *const c_char, c_int)>,
        ) -> c_int;
    }
    unsafe extern "C" fn alloc(n: usize, _: *const c_char, _: c_int) -> *mut c_void {
        // SAFETY: mimalloc's malloc, any size.
        unsafe { libmimalloc_sys::mi_malloc(n) }
    }
    unsafe extern "C" fn realloc(
        p: *mut c_void,
        n: usize,
        _: *const c_char,
        _: c_int,
    ) -> *mut c_void {
        // SAFETY: `p` is null or came from `alloc`/`realloc` (OpenSSL pairs its calls).
        unsafe { libmimalloc_sys::mi_realloc(p, n) }
    }
    unsafe extern "C" fn free(p: *mut c_void, _: *const c_char, _: c_int) {
        // SAFETY: as for `realloc`.
        unsafe { libmimalloc_sys::mi_free(p) }
    }
    // SAFETY: called first thing in `main`, before any OpenSSL call; if OpenSSL allocated
    // already it refuses (returns 0) and keeps its own allocator, which is still correct.
    let _ = unsafe { CRYPTO_set_mem_functions(Some(alloc), Some(realloc), Some(free)) };
}

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
        /// Take the listening sockets over from the running bindgate (binary upgrade): start
        /// this, then send SIGQUIT to the old process, which hands them over and drains.
        #[arg(long)]
        upgrade: bool,
    },
    /// Check the configuration file, then tell the running bindgate (named by
    /// `server.pid_file`) to reload it (SIGHUP).
    Reload {
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
    /// Mint a development initial access token (ES256) with the development signing key.
    DevToken(DevTokenArgs),
    /// Make a development DPoP proof (RFC 9449) with a P-256 key, or print the key's thumbprint.
    DevProof(DevProofArgs),
}

#[derive(clap::Args)]
struct DevProofArgs {
    /// The configuration whose jwks.file folder holds the development keys (only the file
    /// itself is read).
    #[arg(short, long, default_value = "proxy.yaml")]
    config: PathBuf,
    /// The proof key (P-256 PEM); created when the file does not exist. Default: dpop.key
    /// beside the configured jwks.file (as dev-token finds signing.key).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Print the key's RFC 7638 thumbprint (the cnf.jkt of tokens bound to it) and exit.
    #[arg(long)]
    jkt: bool,
    /// The request method (htm).
    #[arg(long, default_value = "POST")]
    htm: String,
    /// The request URI without query (htu), e.g. https://localhost:8443/clients.
    #[arg(long)]
    htu: Option<String>,
    /// The access token the proof goes with (ath).
    #[arg(long, allow_hyphen_values = true)]
    token: Option<String>,
    /// A nonce the server sent in DPoP-Nonce (base64url: it may start with `-`).
    #[arg(long, allow_hyphen_values = true)]
    nonce: Option<String>,
}

/// Why `dev-proof` or `dev-token` made nothing.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Dev(#[from] bindgate::devtoken::DevError),
    #[error(transparent)]
    Certificate(#[from] bindgate::certificate::NotACertificate),
    #[error("{0}")]
    Usage(&'static str),
    #[error("--lifetime: {0}")]
    Lifetime(bindgate::config::units::UnitError),
    #[error("{0} (or give --iss and --key)")]
    Config(bindgate::devtoken::DevError),
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, bindgate::devtoken::DevError> {
    std::fs::read(path).map_err(bindgate::devtoken::DevError::file("read", path))
}

fn dev_proof(a: DevProofArgs) -> Result<String, CliError> {
    let key_path = match a.key {
        Some(k) => k,
        None => bindgate::devtoken::DevSettings::read(&a.config)?
            .key_path(None, "dpop.key")
            .ok_or(CliError::Usage(
                "give --key: the configuration has no jwks.file to find dpop.key beside",
            ))?,
    };
    if !key_path.exists() {
        if let Some(dir) = key_path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(bindgate::devtoken::DevError::file("create", dir))?;
        }
        let pem = bindgate::devtoken::new_key_pem()?;
        bindgate::devcerts::write_private(&key_path, &pem)?;
    }
    let pem = read(&key_path)?;
    let key = bindgate::devtoken::load_key(&pem)?;
    if a.jkt {
        let jwk = bindgate::devtoken::public_jwk(&key)?;
        return Ok(jwk["kid"].as_str().unwrap_or_default().to_string());
    }
    let htu = a.htu.ok_or(CliError::Usage(
        "give --htu (the request URI, e.g. https://localhost:8443/clients)",
    ))?;
    Ok(bindgate::devtoken::dpop_proof(
        &key,
        &a.htm,
        &htu,
        a.token.as_deref(),
        a.nonce.as_deref(),
    )?)
}

/// Logs (the access log among them) go to stdout through a writer thread that writes them in
/// batches (`bindgate::logwriter`): an access-log line costs a request no system call and no
/// wake-up, whatever the rate, and waits at most 100 ms; other lines are written at once.
/// Nothing is dropped (loggers wait when 4 MiB are buffered). Keep the guard alive: dropping
/// it writes what is left.
fn init_logging(format: bindgate::config::LogFormat) -> Option<bindgate::logwriter::Flush> {
    use std::os::fd::AsFd;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BINDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let writer = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| {
            bindgate::logwriter::BatchWriter::spawn("bindgate-log", std::fs::File::from(fd))
        });
    let json = format == bindgate::config::LogFormat::Json;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi && !json);
    let Ok((writer, flush)) = writer else {
        // No descriptor or no thread for the writer: log synchronously rather than not at all.
        if json {
            builder.event_format(bindgate::logformat::JsonLines).init();
        } else {
            builder.init();
        }
        return None;
    };
    let builder = builder.with_writer(writer);
    if json {
        builder.event_format(bindgate::logformat::JsonLines).init();
    } else {
        builder.init();
    }
    Some(flush)
}

#[derive(clap::Args)]
struct DevTokenArgs {
    /// Configuration to take the issuer, audience, scope and key set from.
    #[arg(short, long, default_value = "proxy.yaml")]
    config: PathBuf,
    /// Signing key (PEM). Default: signing.key beside the configured jwks.file (only the
    /// configuration file itself is read, none of the secrets it names).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Scope claim (space-separated). Default: registration.scope. Empty for none.
    #[arg(long)]
    scope: Option<String>,
    /// Audience; repeat for several. Default: registration.endpoint_uri.
    #[arg(long = "aud")]
    audiences: Vec<String>,
    /// Issuer. Default: the configured issuer.
    #[arg(long)]
    iss: Option<String>,
    /// Lifetime, e.g. 10m, 1h.
    #[arg(long, default_value = "10m")]
    lifetime: String,
    /// Mint a token that expired an hour ago.
    #[arg(long)]
    expired: bool,
    /// Bind the token to this client certificate (cnf x5t#S256, RFC 8705).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Bind the token to this DPoP key thumbprint (cnf jkt, RFC 9449); see `dev-proof --jkt`.
    /// A thumbprint is base64url: it may start with `-`.
    #[arg(long, allow_hyphen_values = true)]
    dpop_jkt: Option<String>,
    #[arg(long, default_value = "bindgate-dev")]
    sub: String,
}

fn dev_token(a: DevTokenArgs) -> Result<String, CliError> {
    // Only the file's text is read: no secret it names is needed. With --iss and --key it is
    // not needed at all.
    let settings = match bindgate::devtoken::DevSettings::read(&a.config) {
        Ok(s) => s,
        Err(_) if a.iss.is_some() && a.key.is_some() => Default::default(),
        Err(e) => return Err(CliError::Config(e)),
    };
    let key_path = settings
        .key_path(a.key.as_deref(), "signing.key")
        .ok_or(CliError::Usage(
            "give --key: the configuration has no jwks.file to find signing.key beside",
        ))?;
    let pem = read(&key_path)?;
    let key = bindgate::devtoken::load_key(&pem)?;
    let jwk = bindgate::devtoken::public_jwk(&key)?;
    let kid = jwk["kid"].as_str().unwrap_or_default().to_string();
    let issuer = a.iss.or(settings.issuer).ok_or(CliError::Usage(
        "give --iss: the configuration has no issuer",
    ))?;
    let scope = a
        .scope
        .or(settings.scope)
        .unwrap_or_else(|| "client-reg".into());
    let mut audiences = a.audiences;
    if audiences.is_empty() {
        audiences.extend(settings.endpoint_uri);
    }
    let lifetime =
        bindgate::config::units::parse_duration(&a.lifetime).map_err(CliError::Lifetime)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (iat, exp) = if a.expired {
        (now - 7200, now - 3600)
    } else {
        (now, now + lifetime.as_secs().max(1))
    };
    let mut claims = serde_json::json!({
        "iss": issuer,
        "sub": a.sub,
        "iat": iat,
        "exp": exp,
        "jti": bindgate::devtoken::random_token()?,
    });
    if !scope.is_empty() {
        claims["scp"] = serde_json::json!(scope.split(' ').collect::<Vec<_>>());
    }
    match audiences.len() {
        0 => {}
        1 => claims["aud"] = serde_json::json!(audiences[0]),
        _ => claims["aud"] = serde_json::json!(audiences),
    }
    if let Some(cert) = a.cert {
        let pem = read(&cert)?;
        let thumbprint = bindgate::certificate::thumbprint_of_pem(&pem)?;
        claims["cnf"] = serde_json::json!({ "x5t#S256": thumbprint });
    }
    if let Some(jkt) = a.dpop_jkt {
        claims["cnf"]["jkt"] = serde_json::json!(jkt);
    }
    Ok(bindgate::devtoken::sign_es256(&key, &kid, &claims)?)
}

/// `bindgate reload`: the file is checked here first, so that a broken one is reported to the
/// operator at once (the running process would refuse it too, and keep its configuration).
fn reload(path: &std::path::Path) -> ExitCode {
    let config = match bindgate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            eprintln!("not reloaded: the running bindgate keeps its configuration");
            return ExitCode::from(2);
        }
    };
    let Some(pid_file) = config.server.pid_file else {
        eprintln!("server.pid_file is not set: send SIGHUP to the bindgate process yourself");
        return ExitCode::FAILURE;
    };
    let pid = match std::fs::read_to_string(&pid_file) {
        Ok(p) => match p.trim().parse::<u32>() {
            Ok(pid) if pid > 1 => pid,
            _ => {
                eprintln!("{}: does not hold a process id", pid_file.display());
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("{}: {e} (is bindgate running?)", pid_file.display());
            return ExitCode::FAILURE;
        }
    };
    let verdict_file = bindgate::reload::verdict_path(&pid_file);
    let header = |text: &str| text.lines().next().unwrap_or_default().to_string();
    let before = std::fs::read_to_string(&verdict_file)
        .map(|t| header(&t))
        .unwrap_or_default();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !sent {
        eprintln!(
            "cannot signal process {pid} (named by {})",
            pid_file.display()
        );
        return ExitCode::FAILURE;
    }
    // The running process's own verdict: it may refuse what this check accepted (a key set
    // that cannot be fetched, a part that needs a restart, a certificate not valid now).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let ours = format!("pid {pid} reload ");
    while std::time::Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&verdict_file) {
            let h = header(&text);
            if h != before && h.starts_with(&ours) {
                let mut lines = text.lines().skip(1);
                return match lines.next() {
                    Some("ok") => {
                        println!("{}: reloaded by bindgate (pid {pid})", path.display());
                        ExitCode::SUCCESS
                    }
                    _ => {
                        eprintln!("{}: bindgate (pid {pid}) refused it:", path.display());
                        for problem in lines {
                            eprintln!("  {problem}");
                        }
                        eprintln!("not reloaded: the running bindgate keeps its configuration");
                        ExitCode::FAILURE
                    }
                };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "{}: SIGHUP sent to bindgate (pid {pid}), but it gave no verdict within 30 s: see its log and bindgate_config_reloads_total",
        path.display()
    );
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    openssl_on_mimalloc();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, upgrade } => {
            let config = match bindgate::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            };
            // An unreadable BINDGATE_LOG is an error, not silence at another level.
            if let Ok(filter) = std::env::var("BINDGATE_LOG") {
                if let Err(e) = tracing_subscriber::EnvFilter::try_new(&filter) {
                    eprintln!("bindgate: BINDGATE_LOG=`{filter}` is not a log filter: {e}");
                    return ExitCode::from(2);
                }
            }
            // Held until the process ends: dropping it flushes what is queued.
            let _log = init_logging(config.log_format);
            match bindgate::serve::run(config, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bindgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reload { config } => reload(&config),
        Command::Check { config } => match bindgate::config::load(&config) {
            Ok(loaded) => {
                for w in bindgate::config::advice::warnings(&loaded) {
                    eprintln!("warning: {w}");
                }
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
        Command::DevProof(args) => match dev_proof(args) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bindgate dev-proof: {e}");
                ExitCode::FAILURE
            }
        },
        Command::DevToken(args) => match dev_token(args) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bindgate: {e}");
                ExitCode::FAILURE
            }
        },
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
