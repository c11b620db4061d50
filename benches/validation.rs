//! Token validation cost: warm (verified-cache hit, binding checked), cold (full validation)
//! against the bare signature verification of the same token with the same backend (OpenSSL
//! for RSA, ring for ECDSA), plus the other backend and the `jsonwebtoken` crate for comparison.
//!
//!     cargo bench --bench validation
//!
//! Results and the machine they ran on: BENCHMARKS.md.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bindgate::auth::cache::{now_secs, VerifiedCache};
use bindgate::auth::claims::Policy;
use bindgate::auth::jwks::{KeyStore, Lookup};
use bindgate::auth::jws::{split, verify_signature};
use bindgate::auth::token::TokenValidator;
use bindgate::certificate::PeerCertificate;
use bindgate::config::{Jwks, JwksSource, JwsAlgorithm, SecretDigest, SecretSet};
use bindgate::metrics::Metrics;
use bindgate::readiness::Readiness;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const ISSUER: &str = "https://idp.example.com";
const ENDPOINT: &str = "https://idp.example.com/clients";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

struct Fixture {
    validator_cached: TokenValidator,
    validator_cold: TokenValidator,
    store: Arc<KeyStore>,
    peer: PeerCertificate,
    rs256: String,
    es256: String,
    rs_decoding: jsonwebtoken::DecodingKey,
    es_public_der: Vec<u8>,
    es_decoding: jsonwebtoken::DecodingKey,
    es_encoding: jsonwebtoken::EncodingKey,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let rsa = Rsa::generate(2048).unwrap();
    let rs_jwk = json!({"kty": "RSA", "kid": "rs", "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
    let rs_encoding =
        jsonwebtoken::EncodingKey::from_rsa_pem(&rsa.private_key_to_pem().unwrap()).unwrap();
    let rs_decoding = jsonwebtoken::DecodingKey::from_rsa_components(
        rs_jwk["n"].as_str().unwrap(),
        rs_jwk["e"].as_str().unwrap(),
    )
    .unwrap();

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let (mut x, mut y) = (
        openssl::bn::BigNum::new().unwrap(),
        openssl::bn::BigNum::new().unwrap(),
    );
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut BigNumContext::new().unwrap())
        .unwrap();
    let (x, y) = (
        b64(&x.to_vec_padded(32).unwrap()),
        b64(&y.to_vec_padded(32).unwrap()),
    );
    let es_jwk = json!({"kty": "EC", "crv": "P-256", "kid": "es", "x": x, "y": y});
    let es_pkey = PKey::from_ec_key(ec).unwrap();
    let es_public_der = es_pkey.public_key_to_der().unwrap();
    let es_encoding =
        jsonwebtoken::EncodingKey::from_ec_pem(&es_pkey.private_key_to_pem_pkcs8().unwrap())
            .unwrap();
    let es_decoding = jsonwebtoken::DecodingKey::from_ec_components(&x, &y).unwrap();

    // A certificate-bound token, as Connect2id issues them: scp array, cnf x5t#S256.
    let cert_der = b"a client certificate's DER stands here; only its SHA-256 matters".to_vec();
    let peer = PeerCertificate::from_der(&cert_der);
    let now = now_secs() as i64;
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": ENDPOINT, "scp": ["openid", "client-reg"],
        "iat": now, "exp": now + 3600, "jti": "c5f7a1", "cid": "000123",
        "cnf": {"x5t#S256": peer.thumbprint()},
    });
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("rs".into());
    let rs256 = jsonwebtoken::encode(&h, &claims, &rs_encoding).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("es".into());
    let es256 = jsonwebtoken::encode(&h, &claims, &es_encoding).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({"keys": [rs_jwk, es_jwk]}).to_string()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let jwks = Jwks {
        source: JwksSource::File(jwks_path),
        refresh_interval: Duration::from_secs(300),
        min_refetch_interval: Duration::from_secs(30),
        max_stale: Duration::from_secs(86400),
        ca: None,
        fetch_timeout: Duration::from_secs(5),
    };
    let store = Arc::new(
        KeyStore::new(
            &jwks,
            "bench",
            metrics.clone(),
            Some(Arc::new(Readiness::new(true))),
            Box::new(|| {}),
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(store.refresh(false)));
    let algs = vec![JwsAlgorithm::RS256, JwsAlgorithm::ES256];
    let cache = Arc::new(VerifiedCache::new(100_000, Duration::from_secs(60)));
    let leeway = Duration::from_secs(60);
    Fixture {
        validator_cached: TokenValidator::new(
            store.clone(),
            Some(cache),
            ISSUER.into(),
            leeway,
            algs.clone(),
            metrics.clone(),
        ),
        validator_cold: TokenValidator::new(
            store.clone(),
            None,
            ISSUER.into(),
            leeway,
            algs,
            metrics,
        ),
        store,
        peer,
        rs256,
        es256,
        rs_decoding,
        es_public_der,
        es_decoding,
        es_encoding,
        _dir: dir,
    }
}

fn bench_policy() -> Policy {
    Policy {
        audiences: vec![ENDPOINT.into(), ISSUER.into()],
        check_audience: true,
        scopes: vec!["client-reg".into()],
        require_certificate_binding: false,
        require_proof_of_possession: false,
    }
}

/// What the authoriser does per request for a bearer token: digest the token once (cache key
/// and master-token comparison), compare it with the master tokens, take the verified token
/// (cache or verification), check clock, policy, binding and scope.
fn full_path(v: &TokenValidator, master: &SecretSet, token: &str, peer: &PeerCertificate) {
    let digest = SecretDigest::of(token.as_bytes());
    assert!(!master.contains_digest(&digest));
    let entry = v
        .verified_now(token, digest.bytes())
        .unwrap()
        .expect("known key");
    let policy = bench_policy();
    v.check(&entry.verified, &policy, Some(peer), now_secs())
        .unwrap();
    policy.check_scope(&entry.verified).unwrap();
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let master = SecretSet::new(vec![SecretDigest::of(b"master-token-1")]);

    let mut g = c.benchmark_group("digest");
    g.bench_function("sha256_token_sha2", |b| {
        b.iter(|| SecretDigest::of(black_box(f.rs256.as_bytes())))
    });
    g.bench_function("sha256_token_openssl", |b| {
        b.iter(|| openssl::sha::sha256(black_box(f.rs256.as_bytes())))
    });
    g.finish();

    let mut g = c.benchmark_group("warm");
    for (name, token) in [("es256", &f.es256), ("rs256", &f.rs256)] {
        full_path(&f.validator_cached, &master, token, &f.peer);
        g.bench_function(format!("{name}_bound_cache_hit"), |b| {
            b.iter(|| full_path(&f.validator_cached, &master, black_box(token), &f.peer))
        });
    }
    g.finish();

    // A fresh token per request (scenario b): a cache miss, then an insert, on every call.
    let mut g = c.benchmark_group("fresh");
    let pool: Vec<String> = (0..20_000)
        .map(|i| {
            let mut claims: serde_json::Value =
                serde_json::from_slice(&split(&f.es256).unwrap().payload).unwrap();
            claims["jti"] = json!(format!("fresh-{i}"));
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            h.kid = Some("es".into());
            jsonwebtoken::encode(&h, &claims, &f.es_encoding).unwrap()
        })
        .collect();
    g.bench_function("es256_cache_miss_and_insert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                // A fresh, empty cache for each pass over the pool: every call is a miss.
                let cache = Arc::new(VerifiedCache::new(100_000, Duration::from_secs(60)));
                let v = TokenValidator::new(
                    f.store.clone(),
                    Some(cache),
                    ISSUER.into(),
                    Duration::from_secs(60),
                    vec![JwsAlgorithm::RS256, JwsAlgorithm::ES256],
                    Arc::new(Metrics::new()),
                );
                let n = (iters - done).min(pool.len() as u64) as usize;
                let t = std::time::Instant::now();
                for token in &pool[..n] {
                    full_path(&v, &master, black_box(token), &f.peer);
                }
                total += t.elapsed();
                done += n as u64;
            }
            total
        })
    });
    let mut next = 0usize;
    g.bench_function("es256_no_cache", |b| {
        b.iter(|| {
            next = (next + 1) % pool.len();
            full_path(&f.validator_cold, &master, black_box(&pool[next]), &f.peer)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cold");
    for (name, alg, token, jwt_alg, decoding) in [
        (
            "rs256",
            JwsAlgorithm::RS256,
            &f.rs256,
            jsonwebtoken::Algorithm::RS256,
            &f.rs_decoding,
        ),
        (
            "es256",
            JwsAlgorithm::ES256,
            &f.es256,
            jsonwebtoken::Algorithm::ES256,
            &f.es_decoding,
        ),
    ] {
        g.bench_function(format!("{name}_full_validation_bindgate"), |b| {
            b.iter(|| full_path(&f.validator_cold, &master, black_box(token), &f.peer))
        });
        let kid = if alg == JwsAlgorithm::RS256 {
            "rs"
        } else {
            "es"
        };
        let Ok(Lookup::Found(key)) = f.store.lookup(Some(kid), alg) else {
            panic!("key")
        };
        let parts = split(token).unwrap();
        let input = parts.signing_input.to_vec();
        let signature = parts.signature.clone();
        assert!(verify_signature(alg, &key, &input, &signature));
        g.bench_function(format!("{name}_bare_signature_bindgate_backend"), |b| {
            b.iter(|| {
                assert!(verify_signature(
                    alg,
                    &key,
                    black_box(&input),
                    black_box(&signature)
                ))
            })
        });
        // Everything but the signature: what bindgate adds to the bare verification.
        g.bench_function(format!("{name}_everything_but_the_signature"), |b| {
            b.iter(|| {
                let digest = SecretDigest::of(black_box(token).as_bytes());
                assert!(!master.contains_digest(&digest));
                let jws = split(token).unwrap();
                let header: bindgate::auth::jws::Header =
                    serde_json::from_slice(&jws.header).unwrap();
                let Ok(Lookup::Found(_key)) = f.store.lookup(header.kid.as_deref(), alg) else {
                    panic!("key")
                };
                bindgate::auth::claims::verify_claims(&jws.payload, ISSUER).unwrap()
            })
        });
        if alg == JwsAlgorithm::ES256 {
            let ec = EcKey::public_key_from_der(&f.es_public_der).unwrap();
            let sig = openssl::ecdsa::EcdsaSig::from_private_components(
                openssl::bn::BigNum::from_slice(&signature[..32]).unwrap(),
                openssl::bn::BigNum::from_slice(&signature[32..]).unwrap(),
            )
            .unwrap();
            g.bench_function("es256_bare_signature_openssl", |b| {
                b.iter(|| {
                    assert!(sig
                        .verify(&openssl::sha::sha256(black_box(&input)), &ec)
                        .unwrap())
                })
            });
        }
        let sig_b64 = token.rsplit('.').next().unwrap().to_string();
        g.bench_function(
            format!("{name}_bare_signature_via_jsonwebtoken_ring"),
            |b| {
                b.iter(|| {
                    assert!(jsonwebtoken::crypto::verify(
                        black_box(&sig_b64),
                        black_box(&input),
                        decoding,
                        jwt_alg
                    )
                    .unwrap())
                })
            },
        );
        let mut validation = jsonwebtoken::Validation::new(jwt_alg);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ENDPOINT]);
        g.bench_function(format!("{name}_full_decode_jsonwebtoken_ring"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(token), decoding, &validation)
                    .unwrap()
            })
        });
    }
    g.finish();
    dpop(c);
}

/// A DPoP proof check (RFC 9449 §4.3, ES256) against the bare verification of its signature:
/// every proof is fresh (a proof is accepted once), minted before timing.
fn dpop(c: &mut Criterion) {
    use bindgate::auth::dpop::{ProofChecker, ProofRequest};
    let key = bindgate::devtoken::load_key(&bindgate::devtoken::new_key_pem().unwrap()).unwrap();
    let token = "an-access-token";
    let pool: Vec<String> = (0..5000)
        .map(|_| {
            bindgate::devtoken::dpop_proof(
                &key,
                "POST",
                "https://localhost:8443/clients",
                Some(token),
                None,
            )
            .unwrap()
        })
        .collect();
    let config = bindgate::config::Dpop {
        origins: vec!["https://localhost:8443".into()],
        max_age: Duration::from_secs(60),
        replay_cache_entries: 1_000_000,
        require_nonce: false,
        algorithms: vec![JwsAlgorithm::ES256],
    };
    let method = http::Method::POST;
    let mut g = c.benchmark_group("dpop");
    g.bench_function("es256_proof_check", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                // A fresh checker (empty replay cache) for each pass over the pool.
                let mut checker =
                    ProofChecker::new(&config, Duration::from_secs(60), Arc::new(Metrics::new()))
                        .unwrap();
                // The pool was minted before this checker: as if its record were shared (a
                // fresh unshared record refuses proofs from before it began).
                checker.share_record();
                let n = (iters - done).min(pool.len() as u64) as usize;
                let t = std::time::Instant::now();
                for proof in &pool[..n] {
                    let req = ProofRequest {
                        method: &method,
                        path: "/clients",
                        access_token: Some(token),
                        now: now_secs(),
                    };
                    checker.check(black_box(proof), &req).unwrap();
                }
                total += t.elapsed();
                done += n as u64;
            }
            total
        })
    });
    let jws = split(&pool[0]).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&jws.header).unwrap();
    let proof_key = bindgate::auth::jwk::parse_jwk(&header["jwk"])
        .unwrap()
        .unwrap();
    let input = jws.signing_input.to_vec();
    g.bench_function("es256_bare_signature", |b| {
        b.iter(|| {
            assert!(verify_signature(
                JwsAlgorithm::ES256,
                &proof_key,
                black_box(&input),
                black_box(&jws.signature)
            ))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
