use super::*;
use crate::api::e2b::pb::process::{
    process_event, process_selector, ConnectRequest, ListRequest, ProcessEvent, ProcessSelector,
    StartResponse,
};
use http_body_util::BodyExt as _;

fn headers(content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("ascii"),
    );
    h
}

async fn body_of(response: Response) -> Vec<u8> {
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    bytes.to_vec()
}

fn content_type(response: &Response) -> &str {
    response.headers()[CONTENT_TYPE].to_str().expect("ascii")
}

fn by_pid(pid: u32) -> ConnectRequest {
    ConnectRequest {
        process: Some(ProcessSelector {
            selector: Some(process_selector::Selector::Pid(pid)),
        }),
    }
}

fn data(stdout: &[u8]) -> StartResponse {
    StartResponse {
        event: Some(ProcessEvent {
            event: Some(process_event::Event::Data(process_event::DataEvent {
                output: Some(process_event::data_event::Output::Stdout(stdout.to_vec())),
            })),
        }),
    }
}

#[test]
fn codec_from_content_type() {
    let unary = |ct: &str| Codec::for_unary(&headers(ct));
    assert_eq!(unary("application/json"), Ok(Codec::Json));
    assert_eq!(unary("application/json; charset=utf-8"), Ok(Codec::Json));
    assert_eq!(unary("Application/JSON;charset=\"UTF-8\""), Ok(Codec::Json));
    assert_eq!(unary("application/proto"), Ok(Codec::Proto));
    assert!(unary("application/json; charset=latin1").is_err());
    assert!(unary("application/connect+json").is_err());
    assert!(unary("text/plain").is_err());
    assert!(Codec::for_unary(&HeaderMap::new()).is_err());
    let stream = |ct: &str| Codec::for_stream(&headers(ct));
    assert_eq!(stream("application/connect+json"), Ok(Codec::Json));
    assert_eq!(stream("application/connect+proto"), Ok(Codec::Proto));
    assert!(stream("application/json").is_err());
}

#[tokio::test]
async fn unsupported_media_type_is_415_with_accept_post() {
    let e = Codec::for_unary(&headers("text/plain")).expect_err("unsupported");
    assert!(e.to_string().contains("text/plain"), "{e}");
    let response = e.into_response();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(response.headers()["accept-post"]
        .to_str()
        .is_ok_and(|v| v.contains("application/proto")));
}

#[test]
fn codes_have_wire_names_and_statuses() {
    let expect = [
        (Code::Canceled, "canceled", 499),
        (Code::Unknown, "unknown", 500),
        (Code::InvalidArgument, "invalid_argument", 400),
        (Code::DeadlineExceeded, "deadline_exceeded", 504),
        (Code::NotFound, "not_found", 404),
        (Code::AlreadyExists, "already_exists", 409),
        (Code::PermissionDenied, "permission_denied", 403),
        (Code::ResourceExhausted, "resource_exhausted", 429),
        (Code::FailedPrecondition, "failed_precondition", 400),
        (Code::Aborted, "aborted", 409),
        (Code::OutOfRange, "out_of_range", 400),
        (Code::Unimplemented, "unimplemented", 501),
        (Code::Internal, "internal", 500),
        (Code::Unavailable, "unavailable", 503),
        (Code::DataLoss, "data_loss", 500),
        (Code::Unauthenticated, "unauthenticated", 401),
    ];
    assert_eq!(expect.len(), Code::ALL.len());
    for (code, name, status) in expect {
        assert_eq!(code.as_str(), name);
        assert_eq!(code.to_string(), name);
        assert_eq!(Code::from_wire(name), Some(code));
        assert_eq!(code.http_status().as_u16(), status, "{name}");
    }
    assert_eq!(Code::from_wire("NOT_FOUND"), None);
}

#[tokio::test]
async fn unary_error_is_status_and_json() {
    let response = ConnectError::new(Code::NotFound, "process 7 not found").into_response();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(content_type(&response), "application/json");
    assert_eq!(
        body_of(response).await,
        br#"{"code":"not_found","message":"process 7 not found"}"#
    );
    let bare = ConnectError::new(Code::Internal, "").into_response();
    assert_eq!(body_of(bare).await, br#"{"code":"internal"}"#);
}

#[test]
fn decode_unary_both_codecs() {
    let json = br#"{"process":{"pid":7},"unknownField":1}"#;
    assert_eq!(
        decode_unary::<ConnectRequest>(Codec::Json, json),
        Ok(by_pid(7))
    );
    let proto = by_pid(7).encode_to_vec();
    assert_eq!(
        decode_unary::<ConnectRequest>(Codec::Proto, &proto),
        Ok(by_pid(7))
    );
    assert_eq!(
        decode_unary::<ListRequest>(Codec::Json, b""),
        Ok(ListRequest {})
    );
    let e = decode_unary::<ConnectRequest>(Codec::Json, b"{\"process\":").expect_err("bad");
    assert_eq!(e.code, Code::InvalidArgument);
    assert!(e.message.starts_with("cannot decode message: "), "{e}");
    let e = decode_unary::<ConnectRequest>(Codec::Proto, b"\x0a\x05").expect_err("bad");
    assert_eq!(e.code, Code::InvalidArgument);
}

#[tokio::test]
async fn unary_response_in_each_codec() {
    let response = unary_response(Codec::Json, &by_pid(3));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "application/json");
    assert_eq!(body_of(response).await, br#"{"process":{"pid":3}}"#);
    let response = unary_response(Codec::Proto, &by_pid(3));
    assert_eq!(content_type(&response), "application/proto");
    assert_eq!(body_of(response).await, by_pid(3).encode_to_vec());
}

#[test]
fn stream_request_is_exactly_one_envelope() {
    let one = encode_envelope(0, br#"{"process":{"tag":"t"}}"#);
    let got: ConnectRequest = decode_stream_request(Codec::Json, &one).expect("valid");
    assert_eq!(
        got.process.and_then(|p| p.selector),
        Some(process_selector::Selector::Tag("t".into()))
    );
    let proto = encode_envelope(0, &by_pid(9).encode_to_vec());
    assert_eq!(decode_stream_request(Codec::Proto, &proto), Ok(by_pid(9)));
    let bad = |body: &[u8]| decode_stream_request::<ConnectRequest>(Codec::Json, body);
    assert_eq!(bad(b"").map_err(|e| e.code), Err(Code::InvalidArgument));
    assert_eq!(
        bad(&[&one[..], &one[..]].concat()).map_err(|e| e.code),
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        bad(&one[..one.len() - 1]).map_err(|e| e.code),
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        bad(&end_stream(None)).map_err(|e| e.code),
        Err(Code::InvalidArgument)
    );
    let compressed = encode_envelope(COMPRESSED, b"{}");
    assert_eq!(
        bad(&compressed).map_err(|e| e.code),
        Err(Code::Unimplemented)
    );
}

#[tokio::test]
async fn stream_response_frames_messages_then_end() {
    let items = vec![Ok(data(b"hi")), Ok(data(b"!"))];
    let response = stream_response(Codec::Json, futures_util::stream::iter(items));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(content_type(&response), "application/connect+json");
    let mut expected = encode_envelope(0, br#"{"event":{"data":{"stdout":"aGk="}}}"#).to_vec();
    expected.extend_from_slice(&encode_envelope(
        0,
        br#"{"event":{"data":{"stdout":"IQ=="}}}"#,
    ));
    expected.extend_from_slice(&end_stream(None));
    assert_eq!(body_of(response).await, expected);
}

#[tokio::test]
async fn stream_response_ends_at_the_first_error() {
    let items = vec![
        Ok(data(b"hi")),
        Err(ConnectError::new(Code::Unavailable, "sandbox gone")),
        Ok(data(b"never")),
    ];
    let response = stream_response(Codec::Proto, futures_util::stream::iter(items));
    assert_eq!(content_type(&response), "application/connect+proto");
    let mut expected = encode_envelope(0, &data(b"hi").encode_to_vec()).to_vec();
    expected.extend_from_slice(&end_stream(Some(&ConnectError::new(
        Code::Unavailable,
        "sandbox gone",
    ))));
    assert_eq!(body_of(response).await, expected);

    let early = stream_error(Codec::Json, &ConnectError::new(Code::NotFound, "no"));
    assert_eq!(early.status(), StatusCode::OK);
    let body = body_of(early).await;
    assert_eq!(
        &body[5..],
        br#"{"error":{"code":"not_found","message":"no"}}"#
    );
}

#[tokio::test]
async fn client_stream_decodes_until_the_body_ends() {
    let mut body = encode_envelope(0, br#"{"process":{"pid":1}}"#).to_vec();
    body.extend_from_slice(&encode_envelope(0, br#"{"process":{"pid":2}}"#));
    let got: Vec<_> = decode_client_stream::<ConnectRequest>(
        Codec::Json,
        Body::from(body.clone()),
        DEFAULT_MAX_MESSAGE_SIZE,
    )
    .collect()
    .await;
    assert_eq!(got, vec![Ok(by_pid(1)), Ok(by_pid(2))]);

    body.extend_from_slice(b"\x00\x00");
    let got: Vec<_> = decode_client_stream::<ConnectRequest>(Codec::Json, Body::from(body), 1024)
        .collect()
        .await;
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[2].as_ref().map_err(|e| e.code),
        Err(Code::InvalidArgument)
    );

    let big = encode_envelope(0, &[b' '; 64]);
    let got: Vec<_> = decode_client_stream::<ConnectRequest>(Codec::Json, Body::from(big), 8)
        .collect()
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].as_ref().map_err(|e| e.code),
        Err(Code::ResourceExhausted)
    );
}

#[test]
fn timeout_header() {
    let with = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            "connect-timeout-ms",
            HeaderValue::from_str(v).expect("ascii"),
        );
        timeout_from_headers(&h)
    };
    assert_eq!(timeout_from_headers(&HeaderMap::new()), Ok(None));
    assert_eq!(with("1500"), Ok(Some(Duration::from_millis(1500))));
    assert_eq!(with("0"), Ok(Some(Duration::ZERO)));
    assert_eq!(
        with("9999999999"),
        Ok(Some(Duration::from_millis(9_999_999_999)))
    );
    for bad in ["", "12345678901", "-1", "1.5", "10s", " 5"] {
        assert_eq!(
            with(bad).map_err(|e| e.code),
            Err(Code::InvalidArgument),
            "{bad:?}"
        );
    }
}
