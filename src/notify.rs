//! systemd's readiness protocol (`sd_notify`, `Type=notify`): when `NOTIFY_SOCKET` is set,
//! bindgate says when it serves (`READY=1` with its own `MAINPID`, so that after a binary
//! upgrade systemd follows the new process), when it reloads and when it stops. Without
//! `NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=value` lines) to systemd; whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = match bytes.first() {
        // An abstract socket (`@name`).
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])
                .and_then(|a| socket.send_to_addr(state.as_bytes(), &a))
        }
        Some(b'/') => socket.send_to(state.as_bytes(), &path),
        _ => return false,
    };
    if let Err(e) = &sent {
        tracing::warn!("systemd notification not sent to NOTIFY_SOCKET: {e}");
    }
    sent.is_ok()
}

/// Serving: the listener answers handshakes.
pub fn ready(listen: std::net::SocketAddr) {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=serving on https://{listen}",
        std::process::id()
    ));
}

/// A reload begins.
pub fn reloading() {
    notify("RELOADING=1\nSTATUS=reloading the configuration");
}

/// A reload ended, taken or refused: serving again.
pub fn reloaded(verdict: &str) {
    notify(&format!("READY=1\nSTATUS={verdict}"));
}

/// Shutting down (SIGTERM), or handing the sockets to a new process.
pub fn stopping(status: &str) {
    notify(&format!("STOPPING=1\nSTATUS={status}"));
}
