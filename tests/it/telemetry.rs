//! OpenTelemetry traces (issue 18 §2) against a real OTLP/HTTP receiver that decodes the spans
//! with OpenTelemetry's own protobuf package: span names, kinds, parentage, attributes and the
//! rejection reason; W3C trace context from a trusted client, replaced for an untrusted one,
//! always given to the upstream; an export that never holds a request up.

use crate::harness::otlp::Collector;
use crate::harness::tokens::*;
use crate::harness::*;
use jsonwebtoken::Algorithm;
use serde_json::Value;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

struct Setup {
    pki: Pki,
    idp: Upstream,
    jwks: Upstream,
    signer: Signer,
    bg: Bindgate,
}

fn setup(telemetry: &str) -> Setup {
    let signer = Signer::new(Algorithm::ES256, "es-1");
    let pki = Pki::new();
    let (jwks, idp) = key_server_and_provider(&[&signer]);
    let yaml = format!(
        r#"{LISTENERS}issuer: "{ISSUER}"
jwks: {{uri: "http://{jwks}/jwks.json"}}
registration:
  endpoint_uri: "{ENDPOINT}"
  master_tokens: [{{file: "{{PKI}}/master.token"}}]
upstreams:
  idp: {{address: "{idp}"}}
routes:
  - {{prefix: /api, upstream: idp}}
state: {{path: ":memory:"}}
server: {{threads: 1}}
{telemetry}
"#,
        jwks = jwks.addr,
        idp = idp.addr,
    );
    let bg = Bindgate::start(&pki, &yaml);
    Setup {
        pki,
        idp,
        jwks,
        signer,
        bg,
    }
}

fn telemetry(collector: &str, trust: bool, extra: &str) -> String {
    format!(
        "telemetry:\n  trust_incoming_trace: {trust}\n  otlp: {{endpoint: \"{collector}\", service_name: bindgate-test{extra}}}\n"
    )
}

fn by_name<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// The parts of a `traceparent` value.
fn parts(value: &str) -> (String, String) {
    let p: Vec<&str> = value.split('-').collect();
    assert_eq!(p.len(), 4, "{value}");
    assert_eq!(p[0], "00");
    (p[1].to_string(), p[2].to_string())
}

fn forwarded_with_trust(http: Http) {
    let collector = Collector::start();
    let s = setup(&telemetry(&collector.endpoint(), true, ""));
    let client = s.bg.client(&s.pki, None, http);
    let answer = client
        .get(s.bg.url("/api/things?secret=never-in-a-span"))
        .header("traceparent", traceparent(CLIENT_TRACE, CLIENT_SPAN))
        .header("tracestate", "vendor=opaque")
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);

    // The upstream sees the client's trace, with bindgate's upstream call as parent.
    let got = s.idp.wait_for(1);
    let (trace, parent) = parts(got[0].header("traceparent").expect("traceparent upstream"));
    assert_eq!(trace, CLIENT_TRACE);
    assert_ne!(parent, CLIENT_SPAN);
    assert_eq!(got[0].header("tracestate"), Some("vendor=opaque"));

    let spans = collector.wait(|s| by_name(s, "upstream").len() == 1 && s.len() >= 3);
    let server = by_name(&spans, "GET /api")[0];
    let upstream = by_name(&spans, "upstream")[0];
    let authorise = by_name(&spans, "authorise")[0];
    for span in [server, upstream, authorise] {
        assert_eq!(span["trace_id"], CLIENT_TRACE, "{span}");
        assert_eq!(span["service"], "bindgate-test");
        assert_eq!(span["scope"], "bindgate");
        assert!(span["end"].as_u64() >= span["start"].as_u64());
    }
    // The request's span: a server span whose parent is the client's, remote.
    assert_eq!(server["parent_span_id"], CLIENT_SPAN);
    assert_eq!(server["kind"], 2);
    assert_eq!(server["trace_state"], "vendor=opaque");
    assert_eq!(
        server["flags"].as_u64().unwrap() & 0x300,
        0x300,
        "remote parent"
    );
    let a = &server["attributes"];
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/api/things", "never the query");
    assert_eq!(a["http.route"], "/api");
    assert_eq!(a["http.response.status_code"], 200);
    assert_eq!(
        a["network.protocol.version"],
        if http == Http::One { "1.1" } else { "2" }
    );
    assert_eq!(a["bindgate.decision"], "allowed");
    assert!(!server.to_string().contains("never-in-a-span"));
    // Its children: the authorisation and the upstream call, whose id the upstream saw.
    assert_eq!(authorise["parent_span_id"], server["span_id"]);
    assert_eq!(upstream["parent_span_id"], server["span_id"]);
    assert_eq!(upstream["kind"], 3);
    assert_eq!(upstream["span_id"], parent.as_str());
    assert_eq!(upstream["attributes"]["http.response.status_code"], 200);
    assert_eq!(
        upstream["attributes"]["server.address"],
        s.idp.addr.to_string()
    );

    // The access log names the same trace.
    let log = s.bg.wait_log(&format!("trace_id={CLIENT_TRACE}"));
    assert!(log.contains(&format!("trace_id={CLIENT_TRACE}")), "{log}");
    assert!(log.contains("upstream=idp"), "{log}");
}

#[test]
fn a_trusted_trace_reaches_the_upstream_and_the_collector_http1() {
    forwarded_with_trust(Http::One);
}

#[test]
fn a_trusted_trace_reaches_the_upstream_and_the_collector_http2() {
    forwarded_with_trust(Http::Alpn);
}

/// Without `trust_incoming_trace`, a client's trace context is not taken: bindgate starts its
/// own trace, gives that to the upstream, and drops the client's `tracestate`.
#[test]
fn an_untrusted_trace_is_replaced() {
    let collector = Collector::start();
    let s = setup(&telemetry(&collector.endpoint(), false, ""));
    let client = s.bg.client(&s.pki, None, Http::One);
    let answer = client
        .get(s.bg.url("/api/x"))
        .header("traceparent", traceparent(CLIENT_TRACE, CLIENT_SPAN))
        .header("tracestate", "vendor=opaque")
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let got = s.idp.wait_for(1);
    let (trace, _) = parts(got[0].header("traceparent").unwrap());
    assert_ne!(trace, CLIENT_TRACE);
    assert_eq!(got[0].header("tracestate"), None);
    let spans = collector.wait(|s| !by_name(s, "GET /api").is_empty());
    let server = by_name(&spans, "GET /api")[0];
    assert_eq!(server["trace_id"], trace.as_str());
    assert_eq!(server["parent_span_id"], "", "a root span");
}

/// A client that sends `traceparent` twice, or a malformed one, starts a new trace even when
/// trusted: neither value is taken.
#[test]
fn a_doubled_or_malformed_traceparent_is_not_taken() {
    let collector = Collector::start();
    let s = setup(&telemetry(&collector.endpoint(), true, ""));
    let client = s.bg.client(&s.pki, None, Http::One);
    let other = "0af7651916cd43dd8448eb211c80319c";
    client
        .get(s.bg.url("/api/doubled"))
        .header("traceparent", traceparent(CLIENT_TRACE, CLIENT_SPAN))
        .header("traceparent", traceparent(other, CLIENT_SPAN))
        .send()
        .unwrap();
    client
        .get(s.bg.url("/api/upper"))
        .header(
            "traceparent",
            traceparent(&CLIENT_TRACE.to_uppercase(), CLIENT_SPAN),
        )
        .send()
        .unwrap();
    for got in s.idp.wait_for(2) {
        let (trace, _) = parts(got.header("traceparent").unwrap());
        assert_ne!(trace, CLIENT_TRACE, "{}", got.target);
        assert_ne!(trace, other);
    }
}

/// A refused request is one span with an error status naming the reason; an embedded
/// operation's state step is a child of the request's span.
#[test]
fn refusals_and_state_steps_are_spans() {
    let collector = Collector::start();
    let s = setup(&telemetry(&collector.endpoint(), false, ""));
    let client = s.bg.client(&s.pki, None, Http::One);
    let refused = client
        .post(s.bg.url("/clients"))
        .json(&serde_json::json!({"redirect_uris": ["https://a.example/cb"]}))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
    let registered = client
        .post(s.bg.url("/clients"))
        .bearer_auth(s.pki.token("master.token"))
        .json(&serde_json::json!({"redirect_uris": ["https://a.example/cb"]}))
        .send()
        .unwrap();
    assert_eq!(registered.status(), 201);

    let spans = collector.wait(|s| !by_name(s, "state registration").is_empty() && s.len() >= 5);
    let requests = by_name(&spans, "POST /clients");
    assert_eq!(requests.len(), 2, "{spans:?}");
    let failed = requests
        .iter()
        .find(|s| s["attributes"]["http.response.status_code"] == 401)
        .expect("the refused request's span");
    assert_eq!(failed["status_code"], 2, "ERROR");
    assert_eq!(failed["status_message"], "missing_credentials");
    assert_eq!(
        failed["attributes"]["bindgate.rejection_reason"],
        "missing_credentials"
    );
    assert_eq!(failed["attributes"]["bindgate.decision"], "refused");
    let ok = requests
        .iter()
        .find(|s| s["attributes"]["http.response.status_code"] == 201)
        .unwrap();
    assert_eq!(ok["status_code"], 0, "unset");
    let step = by_name(&spans, "state registration")[0];
    assert_eq!(step["parent_span_id"], ok["span_id"]);
    assert_eq!(step["trace_id"], ok["trace_id"]);
}

/// No collector at the endpoint: requests are answered as ever, and the spans that could not
/// be sent are counted; a queue too small for a request's spans drops them, counted.
#[test]
fn an_absent_collector_or_a_full_queue_costs_requests_nothing() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let s = setup(&telemetry(&closed, false, ", timeout: 1s"));
    let client = s.bg.client(&s.pki, None, Http::One);
    for i in 0..20 {
        let started = std::time::Instant::now();
        let answer = client.get(s.bg.url(&format!("/api/{i}"))).send().unwrap();
        assert_eq!(answer.status(), 200);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    let failed = "bindgate_otlp_spans_total{outcome=\"failed\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.bg.metric(failed) < 60 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(s.bg.metric(failed) >= 60, "{}", s.bg.metrics());

    // A queue of 2 spans cannot take a forwarded request's 3: each is dropped, counted.
    let collector = Collector::start();
    let s = setup(&telemetry(&collector.endpoint(), false, ", queue: 2"));
    let client = s.bg.client(&s.pki, None, Http::One);
    for i in 0..5 {
        assert_eq!(
            client
                .get(s.bg.url(&format!("/api/{i}")))
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    let dropped = "bindgate_otlp_spans_total{outcome=\"dropped\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while s.bg.metric(dropped) < 15 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(s.bg.metric(dropped), 15);
    assert!(
        collector.wait(|s| !s.is_empty()).is_empty(),
        "nothing was queued"
    );
}

/// A token signed by a key the set did not have yet: the key fetch it waits for is a span of
/// its own, a child of the authorisation.
#[test]
fn a_key_fetch_is_a_child_of_the_authorisation() {
    let collector = Collector::start();
    let s = setup(&telemetry(&collector.endpoint(), false, ""));
    let rotated = Signer::new(Algorithm::ES256, "es-2");
    s.jwks.set_reply(200, &jwks(&[&s.signer, &rotated]));
    let client = s.bg.client(&s.pki, None, Http::One);
    let registered = client
        .post(s.bg.url("/clients"))
        .bearer_auth(rotated.sign(&claims()))
        .json(&serde_json::json!({"redirect_uris": ["https://a.example/cb"]}))
        .send()
        .unwrap();
    assert_eq!(registered.status(), 201);
    let spans = collector.wait(|s| !by_name(s, "jwks fetch").is_empty() && s.len() >= 4);
    let fetch = by_name(&spans, "jwks fetch")[0];
    let authorise = by_name(&spans, "authorise")[0];
    let request = by_name(&spans, "POST /clients")[0];
    assert_eq!(fetch["parent_span_id"], authorise["span_id"]);
    assert_eq!(authorise["parent_span_id"], request["span_id"]);
    assert!(fetch["start"].as_u64() >= authorise["start"].as_u64());
    assert!(fetch["end"].as_u64() <= authorise["end"].as_u64());
    assert_eq!(authorise["attributes"]["bindgate.decision"], "allowed");
}

#[test]
fn check_names_bad_telemetry_settings() {
    let pki = Pki::new();
    let yaml = format!(
        "{LISTENERS}routes: []\ntelemetry:\n  otlp: {{endpoint: \"ftp://x\", sample_ratio: 2, service_name: \" \", queue: 0}}\n"
    );
    refused_with(
        &pki,
        &yaml,
        &[
            "telemetry.otlp.endpoint: `ftp://x` is not an http(s) URL",
            "telemetry.otlp.sample_ratio: must be between 0 and 1",
            "telemetry.otlp.service_name: is empty",
            "telemetry.otlp.queue",
        ],
    );
    refused_with(
        &pki,
        &format!("{LISTENERS}routes: []\ntelemetry: {{trust_incoming_trace: true}}\n"),
        &["telemetry.otlp: is missing"],
    );
}
