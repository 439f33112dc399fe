//! A request body for `h2load -d`: one gRPC length-prefixed message.
//!
//! gRPC frames each message as 1 byte compressed-flag (0: not compressed), 4 bytes big-endian
//! length, then the protobuf bytes. h2load sends the file as the body of every request:
//!
//! ```text
//! h2load -t 1 -D 10 -c 10 -m 10 -d req.bin \
//!   -H 'content-type: application/grpc' -H 'te: trailers' \
//!   http://127.0.0.1:8081/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
//! ```
//!
//! Every request then carries the same key (h2load cannot vary the body), which is the hot-key
//! case; h2load checks only the HTTP status, so cross-check decisions with the service's counters.

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use prost::Message;

/// The 5-byte gRPC frame header followed by the serialized request.
pub fn grpc_frame(request: &RateLimitRequest) -> Vec<u8> {
    let payload = request.encode_to_vec();
    // A RateLimitRequest that does not fit in 4 GiB is not something this tool can build.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestShape;

    #[test]
    fn header_length_matches_the_payload_and_decodes_back() {
        let request = RequestShape::new("loadtest", 2, &[], "h2load", None, None).build(0);
        let frame = grpc_frame(&request);
        assert_eq!(frame[0], 0, "not compressed");
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - 5);
        let decoded = RateLimitRequest::decode(&frame[5..]).expect("valid protobuf");
        assert_eq!(decoded, request);
        assert_eq!(decoded.descriptors.len(), 2);
    }
}
