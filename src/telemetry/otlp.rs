//! OTLP/HTTP's protobuf, written by hand: an `ExportTraceServiceRequest` holding one resource
//! (`service.name`), one scope (`bindgate`) and the spans (opentelemetry-proto,
//! `trace/v1/trace.proto`). Only what bindgate sends is encoded.

use super::{Span, Value};

/// Appends protobuf fields to a buffer.
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn tag(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn message(&mut self, field: u32, f: impl FnOnce(&mut Writer)) {
        let mut inner = Writer(Vec::new());
        f(&mut inner);
        self.bytes(field, &inner.0);
    }
    fn uint(&mut self, field: u32, v: u64) {
        self.tag(field, 0);
        self.varint(v);
    }
    fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn fixed32(&mut self, field: u32, v: u32) {
        self.tag(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn key_value(&mut self, field: u32, key: &str, value: &Value) {
        self.message(field, |kv| {
            kv.string(1, key);
            kv.message(2, |any| match value {
                Value::Str(s) => any.string(1, s),
                Value::Int(i) => any.uint(3, *i as u64),
            });
        });
    }
}

/// The request body of `POST {endpoint}/v1/traces` (`application/x-protobuf`).
pub fn export_request(service_name: &str, spans: &[Span]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256 * spans.len() + 64));
    // ExportTraceServiceRequest.resource_spans = 1
    w.message(1, |rs| {
        // ResourceSpans.resource = 1 { attributes = 1 }
        rs.message(1, |r| {
            r.key_value(1, "service.name", &Value::Str(service_name.to_string()));
        });
        // ResourceSpans.scope_spans = 2
        rs.message(2, |ss| {
            // ScopeSpans.scope = 1 { name = 1, version = 2 }
            ss.message(1, |scope| {
                scope.string(1, "bindgate");
                scope.string(2, env!("CARGO_PKG_VERSION"));
            });
            for span in spans {
                ss.message(2, |s| encode_span(s, span));
            }
        });
    });
    w.0
}

fn encode_span(w: &mut Writer, span: &Span) {
    w.bytes(1, &span.trace_id);
    w.bytes(2, &span.span_id);
    if let Some(state) = &span.trace_state {
        w.string(3, state);
    }
    if let Some(parent) = &span.parent_span_id {
        w.bytes(4, parent);
    }
    w.string(5, &span.name);
    w.uint(6, span.kind as u64);
    w.fixed64(7, span.start_unix_nano);
    w.fixed64(8, span.end_unix_nano);
    for (key, value) in &span.attributes {
        w.key_value(9, key, value);
    }
    // Status { message = 2, code = 3 }: ERROR with the rejection reason, else unset.
    if let Some(message) = &span.error {
        w.message(15, |st| {
            st.string(2, message);
            st.uint(3, 2);
        });
    }
    // flags = 16: the W3C trace flags (sampled), and "the parent is known to be remote" bits
    // when it is.
    let mut flags = 0x01 | 0x100;
    if span.remote_parent {
        flags |= 0x200;
    }
    w.fixed32(16, flags);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_fields_are_protobuf() {
        let mut w = Writer(Vec::new());
        w.uint(1, 300);
        assert_eq!(w.0, [0x08, 0xAC, 0x02]);
        let mut w = Writer(Vec::new());
        w.string(2, "hi");
        assert_eq!(w.0, [0x12, 2, b'h', b'i']);
        let mut w = Writer(Vec::new());
        w.fixed64(7, 1);
        assert_eq!(w.0, [0x39, 1, 0, 0, 0, 0, 0, 0, 0]);
    }
}
