//! systemd readiness notification (`sd_notify`), written out because it is
//! one datagram: under `Type=notify` a new process tells systemd it is now
//! the main process (`MAINPID=`), which lets systemd follow a live upgrade.

use std::os::unix::net::UnixDatagram;

/// Sends `state` to `$NOTIFY_SOCKET` if systemd set one. Returns whether a
/// notification was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    let Ok(sock) = UnixDatagram::unbound() else { return false };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        match std::os::unix::net::SocketAddr::from_abstract_name(abstract_name) {
            Ok(addr) => sock.send_to_addr(state.as_bytes(), &addr).is_ok(),
            Err(_) => false,
        }
    } else {
        sock.send_to(state.as_bytes(), &path).is_ok()
    };
    if !sent {
        tracing::debug!("sd_notify failed");
    }
    sent
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_mainpid_and_ready() {
        // Without NOTIFY_SOCKET nothing is sent and nothing fails.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            assert!(!super::notify("READY=1"));
        }
    }
}
