use tonic::Code;

use crate::common::*;

const CONFIG: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 5}\n";

async fn status_of(
    h: &mut Harness,
    req: envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest,
) -> tonic::Status {
    h.client.should_rate_limit(req).await.expect_err("refused")
}

#[tokio::test]
async fn empty_domain_is_invalid_argument() {
    let mut h = Harness::start(CONFIG).await;
    let s = status_of(&mut h, request("", vec![desc(&[("k", "v")])])).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("domain must not be empty"),
        "{}",
        s.message()
    );
}

#[tokio::test]
async fn empty_descriptor_list_is_invalid_argument() {
    let mut h = Harness::start(CONFIG).await;
    let s = status_of(&mut h, request("d", vec![])).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("descriptor list must not be empty"),
        "{}",
        s.message()
    );
}

#[tokio::test]
async fn oversize_requests_are_refused_and_the_server_keeps_serving() {
    let mut h = Harness::start_with(CONFIG, |s| {
        s.max_descriptors = 2;
        s.max_entries = 2;
        s.max_bytes = 16;
    })
    .await;
    let s = status_of(&mut h, request("d", vec![desc(&[("k", "v")]); 3])).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("too many descriptors: 3 (at most 2)"),
        "{}",
        s.message()
    );
    let s = status_of(
        &mut h,
        request("d", vec![desc(&[("a", "1"), ("b", "2"), ("c", "3")])]),
    )
    .await;
    assert!(
        s.message().contains("descriptor 0: too many entries: 3"),
        "{}",
        s.message()
    );
    let long = "x".repeat(17);
    let s = status_of(&mut h, request("d", vec![desc(&[("k", &long)])])).await;
    assert!(
        s.message()
            .contains("descriptor 0 entry 0 value is 17 bytes long (at most 16)"),
        "{}",
        s.message()
    );
    let r = h.ask(request("d", vec![desc(&[("k", "v")])])).await;
    assert_eq!(r.statuses[0].limit_remaining, 4, "still serving");
}

#[tokio::test]
async fn an_override_with_an_unknown_unit_is_invalid_argument() {
    let mut h = Harness::start(CONFIG).await;
    let s = status_of(
        &mut h,
        request("d", vec![with_override(desc(&[("k", "v")]), 5, 42)]),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("unknown unit (42)"), "{}", s.message());
}

#[tokio::test]
async fn negative_hits_are_refused_with_a_reason() {
    let mut h = Harness::start(CONFIG).await;
    let mut d = desc(&[("k", "v")]);
    d.is_negative_hits = true;
    let s = status_of(&mut h, request("d", vec![d])).await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains("is_negative_hits is not supported"),
        "{}",
        s.message()
    );
}

/// Sends raw bytes as the message, so the server sees exactly what a broken client sends.
#[derive(Clone, Default)]
struct RawCodec;

struct Raw;

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

/// A plain gRPC client to the server, for raw bodies sent with [`RawCodec`].
async fn raw_grpc(h: &Harness) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.server.grpc_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc
}

#[tokio::test]
async fn a_malformed_protobuf_message_is_refused_and_the_server_keeps_serving() {
    let mut h = Harness::start(CONFIG).await;
    let mut grpc = raw_grpc(&h).await;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    );
    let err = grpc
        .unary(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff]),
            path,
            RawCodec,
        )
        .await
        .expect_err("garbage is refused");
    assert!(err.message().contains("decode"), "{err:?}");
    let r = h.ask(request("d", vec![desc(&[("k", "v")])])).await;
    assert_eq!(r.statuses[0].limit_remaining, 4, "still serving");
    let metrics = h.get_text("/metrics").await;
    assert!(
        metrics.contains("tollgate_requests_total{code=\"Internal\"} 1"),
        "the refused call is counted under the code it got:\n{metrics}"
    );
}

#[tokio::test]
async fn a_unary_call_carrying_two_messages_is_refused_and_charges_nothing() {
    use prost::Message as _;
    let mut h = Harness::start(CONFIG).await;
    let mut grpc = raw_grpc(&h).await;
    let one = request("d", vec![desc(&[("k", "v")])]).encode_to_vec();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    );
    let messages = tokio_stream::iter(vec![one.clone(), one]);
    let err = grpc
        .client_streaming(tonic::Request::new(messages), path, RawCodec)
        .await
        .expect_err("two messages in a unary call are refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("exactly one message"), "{err:?}");
    let r = h.ask(request("d", vec![desc(&[("k", "v")])])).await;
    assert_eq!(
        r.statuses[0].limit_remaining, 4,
        "the refused call took no token, and the server still serves"
    );
    let metrics = h.get_text("/metrics").await;
    assert!(
        metrics.contains("tollgate_requests_total{code=\"InvalidArgument\"} 1"),
        "counted once, under the code it got:\n{metrics}"
    );
}
