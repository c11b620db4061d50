//! What `check` and `run` warn about: settings that work, but put the service at risk.

use std::os::unix::fs::PermissionsExt;

use super::{Config, Problem};

pub fn warnings(c: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(admin) = &c.admin {
        if !admin.address.ip().is_loopback() {
            out.push(Problem::new(
                "admin.address",
                format!(
                    "{} is not a loopback address: the admin listener (/metrics, /config, \
                     /readyz) is plain HTTP without authentication; keep it on 127.0.0.1 or ::1, \
                     or behind a network policy that only lets the prober and the scraper in",
                    admin.address
                ),
            ));
        }
    }
    let folder = c
        .server
        .upgrade_sock
        .parent()
        .filter(|f| !f.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !folder.is_dir() {
        out.push(Problem::new(
            "server.upgrade_sock",
            format!(
                "the folder {} does not exist: a binary upgrade (`run --upgrade`) would fail",
                folder.display()
            ),
        ));
    }
    let shared = std::fs::metadata(folder).is_ok_and(|m| m.permissions().mode() & 0o002 != 0);
    if shared {
        out.push(Problem::new(
            "server.upgrade_sock",
            format!(
                "{} is in a folder every user may write: another user could listen there first \
                 and be handed the listening sockets at an upgrade; use a folder only bindgate's \
                 user can write (the default is beside server.pid_file)",
                c.server.upgrade_sock.display()
            ),
        ));
    }
    out
}
