//! The client's key share, freed as soon as the server has used it. OpenSSL keeps it
//! (`s3.peer_tmp`) until the connection ends, though TLS 1.3 reads it only to build the
//! ServerHello: for X25519MLKEM768, the default first group, 7 KiB per connection. There is no
//! call to drop it, so the key object OpenSSL holds is emptied in place.

use pingora::tls::ssl::{SslContextBuilder, SslRef};
use std::ffi::{c_int, c_long, c_void, CStr};

/// Frees the key share of `ssl`'s client, if it holds one: the key object's data is freed and
/// its type left X25519 with no key (what `EVP_PKEY_set_type` does to any key). OpenSSL frees
/// the empty object with the connection, as before. Harmless when called again.
pub fn release(ssl: &SslRef) {
    extern "C" {
        fn EVP_PKEY_set_type(pkey: *mut openssl_sys::EVP_PKEY, kind: c_int) -> c_int;
    }
    const NID_X25519: c_int = 1034;
    let Some(key) = peer_tmp_key(ssl) else {
        return;
    };
    // SAFETY: `key` is a live EVP_PKEY we hold a reference to; only this connection's task
    // uses it. Setting a type frees the key data first; X25519's method always exists, so
    // the call succeeds and leaves nothing on the error queue. Then our reference is dropped.
    unsafe {
        EVP_PKEY_set_type(key, NID_X25519);
        openssl_sys::EVP_PKEY_free(key);
    }
}

/// A new reference to the client's key share `ssl` holds (`SSL_get_peer_tmp_key`), which the
/// caller frees; `None` when it holds none.
fn peer_tmp_key(ssl: &SslRef) -> Option<*mut openssl_sys::EVP_PKEY> {
    use foreign_types::ForeignTypeRef;
    const SSL_CTRL_GET_PEER_TMP_KEY: c_int = 109;
    let mut key: *mut openssl_sys::EVP_PKEY = std::ptr::null_mut();
    // SAFETY: `ssl` is a live connection; SSL_get_peer_tmp_key (this control) hands out a new
    // reference to the key or 0 with none.
    let got = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            SSL_CTRL_GET_PEER_TMP_KEY,
            0 as c_long,
            (&mut key as *mut *mut openssl_sys::EVP_PKEY).cast::<c_void>(),
        )
    };
    (got == 1 && !key.is_null()).then_some(key)
}

/// Every handshake on `ctx` frees its client's key share once the ServerHello is built
/// rather than when the handshake completes: the share is then no longer held across the
/// round trip the server waits for (the client's certificate and Finished), when many clients
/// connect at once ~3.5 MiB for 512 of them. The completed handshake's `release` stays as the
/// backstop.
pub fn release_after_server_hello(ctx: &mut SslContextBuilder) {
    extern "C" {
        fn SSL_CTX_set_info_callback(
            ctx: *mut openssl_sys::SSL_CTX,
            cb: Option<unsafe extern "C" fn(*const openssl_sys::SSL, c_int, c_int)>,
        );
    }
    // SAFETY: a live context being built; the callback is a plain function.
    unsafe { SSL_CTX_set_info_callback(ctx.as_ptr(), Some(after_server_hello)) }
}

/// OpenSSL's info callback: with `SSL_CB_ACCEPT_LOOP` it runs before each state change of a
/// server's handshake, in the state just written or read. EncryptedExtensions exists only in
/// TLS 1.3 and follows the (final) ServerHello, whose key share extension used the client's
/// share: from there on nothing reads it. (A HelloRetryRequest is a ServerHello too, before
/// the client's second ClientHello brings the share that counts; the state name is used, not
/// OpenSSL's state numbers, which differ between its versions.)
unsafe extern "C" fn after_server_hello(ssl: *const openssl_sys::SSL, at: c_int, _ret: c_int) {
    const SSL_CB_ACCEPT_LOOP: c_int = 0x2001;
    if at != SSL_CB_ACCEPT_LOOP || ssl.is_null() {
        return;
    }
    // SAFETY: OpenSSL passes the connection whose handshake runs; SSL_state_string returns a
    // static string.
    let state = unsafe { CStr::from_ptr(openssl_sys::SSL_state_string(ssl)) };
    if state.to_bytes() == b"TWEE" {
        use foreign_types::ForeignTypeRef;
        // SAFETY: the callback runs inside this connection's handshake, on the thread that
        // owns it; `release` takes a new reference to the key and touches nothing else.
        release(unsafe { SslRef::from_ptr(ssl.cast_mut()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ssl::{
        HandshakeError, SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode,
    };
    use std::io::{Read, Write};

    /// The length of the client's key share as the server's OpenSSL holds it (0: none).
    fn peer_key_share_len(ssl: &SslRef) -> usize {
        extern "C" {
            fn EVP_PKEY_get1_encoded_public_key(
                pkey: *mut openssl_sys::EVP_PKEY,
                out: *mut *mut u8,
            ) -> usize;
        }
        let Some(key) = peer_tmp_key(ssl) else {
            return 0;
        };
        // SAFETY: `key` is our reference (freed here); the encoding is OpenSSL's to free.
        unsafe {
            let mut encoded: *mut u8 = std::ptr::null_mut();
            let len = EVP_PKEY_get1_encoded_public_key(key, &mut encoded);
            openssl_sys::CRYPTO_free(encoded.cast(), c"key_share.rs".as_ptr(), 0);
            openssl_sys::EVP_PKEY_free(key);
            let _ = openssl::error::ErrorStack::get();
            len
        }
    }

    /// An acceptor, and the count of ClientHellos it has read (two for a handshake with a
    /// HelloRetryRequest).
    fn acceptor(
        dir: &std::path::Path,
        early: bool,
        groups: Option<&str>,
    ) -> (SslAcceptor, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let hellos = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        let counted = hellos.clone();
        acceptor.set_client_hello_callback(move |_, _| {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(openssl::ssl::ClientHelloResponse::SUCCESS)
        });
        acceptor
            .set_certificate_chain_file(dir.join("server.crt"))
            .unwrap();
        acceptor
            .set_private_key_file(dir.join("server.key"), SslFiletype::PEM)
            .unwrap();
        // A client certificate asked for, as bindgate's listener does: the server then waits
        // for the client's Certificate and Finished.
        acceptor.set_verify(SslVerifyMode::PEER);
        if early {
            release_after_server_hello(&mut acceptor);
        }
        if let Some(groups) = groups {
            acceptor.set_groups_list(groups).unwrap();
        }
        (acceptor.build(), hellos)
    }

    fn connector(groups: Option<&str>) -> openssl::ssl::ConnectConfiguration {
        let mut connector = SslConnector::builder(SslMethod::tls_client()).unwrap();
        connector.set_verify(SslVerifyMode::NONE);
        if let Some(groups) = groups {
            connector.set_groups_list(groups).unwrap();
        }
        connector
            .build()
            .configure()
            .unwrap()
            .verify_hostname(false)
    }

    /// Steps a non-blocking handshake to its end (5 s at most).
    fn finish(
        mut mid: openssl::ssl::MidHandshakeSslStream<std::net::TcpStream>,
        side: &str,
    ) -> openssl::ssl::SslStream<std::net::TcpStream> {
        let start = std::time::Instant::now();
        loop {
            match mid.handshake() {
                Ok(s) => return s,
                Err(HandshakeError::WouldBlock(again)) => mid = again,
                Err(e) => panic!("{side}: {e}"),
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(5),
                "{side}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// After the handshake the client's X25519MLKEM768 share (1216 bytes, 7 KiB as OpenSSL
    /// holds it) is gone, and the connection still carries data both ways.
    #[test]
    fn the_clients_key_share_is_released_after_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        crate::devcerts::generate(dir.path()).unwrap();
        let (acceptor, _) = acceptor(dir.path(), false, None);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            let mut s = connector(None).connect("localhost", tcp).unwrap();
            s.write_all(b"ping").unwrap();
            let mut answer = [0u8; 4];
            s.read_exact(&mut answer).unwrap();
            answer
        });
        let (tcp, _) = listener.accept().unwrap();
        let mut s = acceptor.accept(tcp).unwrap();
        assert_eq!(peer_key_share_len(s.ssl()), 1216, "not X25519MLKEM768");
        release(s.ssl());
        assert_eq!(peer_key_share_len(s.ssl()), 0);
        release(s.ssl());
        let mut asked = [0u8; 4];
        s.read_exact(&mut asked).unwrap();
        assert_eq!(&asked, b"ping");
        s.write_all(b"pong").unwrap();
        assert_eq!(&client.join().unwrap(), b"pong");
    }

    /// With `release_after_server_hello`, the share is gone while the server waits for the
    /// client's second flight; without it, it is still held there. So too after a
    /// HelloRetryRequest, itself a ServerHello, whose second ClientHello brings the share that
    /// counts. The handshakes then complete and carry data. Client and server are stepped by hand on non-blocking sockets,
    /// so the server is seen exactly between its flight and the client's.
    #[test]
    fn the_clients_key_share_is_released_before_the_server_waits_for_the_client() {
        let dir = tempfile::tempdir().unwrap();
        crate::devcerts::generate(dir.path()).unwrap();
        // (with the callback, server groups, client groups, the share's length): the defaults
        // (X25519MLKEM768), and a client whose first share (P-256) the server does not take,
        // so that a HelloRetryRequest asks for an X25519 one in a second ClientHello.
        let retry = (Some("X25519"), Some("P-256:X25519"), 32, 2);
        for (early, (server_groups, client_groups, share, hellos)) in [
            (true, (None, None, 1216, 1)),
            (false, (None, None, 1216, 1)),
            (true, retry),
            (false, retry),
        ] {
            let (acceptor, hellos_read) = acceptor(dir.path(), early, server_groups);
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server_tcp, _) = listener.accept().unwrap();
            tcp.set_nonblocking(true).unwrap();
            server_tcp.set_nonblocking(true).unwrap();
            let mut client = match connector(client_groups).connect("localhost", tcp) {
                Err(HandshakeError::WouldBlock(mid)) => mid,
                _ => panic!("the client's handshake did not wait for the server"),
            };
            let mut server = match acceptor.accept(server_tcp) {
                Err(HandshakeError::WouldBlock(mid)) => mid,
                _ => panic!("the server's handshake did not wait"),
            };
            // Each side in turn, until the client's handshake ends: it ends on the step that
            // sends its Finished, so the server, not stepped since, has written its whole
            // flight and waits for the client's.
            let start = std::time::Instant::now();
            let mut client = loop {
                assert!(start.elapsed() < std::time::Duration::from_secs(5));
                std::thread::sleep(std::time::Duration::from_millis(1));
                client = match client.handshake() {
                    Ok(s) => break s,
                    Err(HandshakeError::WouldBlock(mid)) => mid,
                    Err(e) => panic!("client: {e}"),
                };
                server = match server.handshake() {
                    Err(HandshakeError::WouldBlock(mid)) => mid,
                    _ => panic!("the server finished before the client"),
                };
            };
            let hellos_read = hellos_read.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(hellos_read, hellos, "ClientHellos read");
            let held = peer_key_share_len(server.ssl());
            if early {
                assert_eq!(held, 0, "the share is held while the server waits");
            } else {
                assert_eq!(held, share, "not the share asked for");
            }
            let mut server = finish(server, "server");
            assert_eq!(peer_key_share_len(server.ssl()), held);
            client.write_all(b"ping").unwrap();
            let mut asked = [0u8; 4];
            let start = std::time::Instant::now();
            let mut got = 0;
            while got < 4 {
                match server.read(&mut asked[got..]) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(start.elapsed() < std::time::Duration::from_secs(5));
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(e) => panic!("server read: {e}"),
                }
            }
            assert_eq!(&asked, b"ping");
        }
    }
}
