//! gRPC clients get gRPC answers: real gRPC calls (tonic's client, HTTP/2 without TLS) through a real Envoy to a
//! real gRPC upstream (tonic's server). A refused call is answered as Envoy's own filters answer one: HTTP 200,
//! trailers-only, `grpc-status` 16 (UNAUTHENTICATED) or 7 (PERMISSION_DENIED), the description as `grpc-message`
//! (percent-encoded on the wire, decoded by the client) and the `WWW-Authenticate` challenge; an allowed call
//! reaches the upstream with the verified claims forwarded.
//! The messages are raw bytes (a codec of our own), so no protobuf compiler is needed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use edgewarden_e2e::{Stack, TestKey, TokenBuilder};
use serde_json::{json, Value};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};

use crate::base_config;

/// The one method of the test service.
const METHOD: &str = "/edgewarden.e2e.Echo/Say";
/// The same method under `/admin`, where the base configuration's rule needs scope `admin` (routed the same way).
const ADMIN_METHOD: &str = "/admin/edgewarden.e2e.Echo/Say";

/// Messages as plain bytes, in and out.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
struct RawCoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }

    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The upstream's one method: answers `<x-jwt-sub the upstream received>|<the request message>`.
#[derive(Debug, Clone, Copy)]
struct Say;

impl tonic::server::UnaryService<Vec<u8>> for Say {
    type Response = Vec<u8>;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Vec<u8>>, Status>> + Send>>;

    fn call(&mut self, request: Request<Vec<u8>>) -> Self::Future {
        let sub = request
            .metadata()
            .get("x-jwt-sub")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let mut answer = format!("{sub}|").into_bytes();
        answer.extend_from_slice(request.get_ref());
        Box::pin(async move { Ok(Response::new(answer)) })
    }
}

/// The upstream gRPC service, routed by tonic's server.
#[derive(Debug, Clone, Copy)]
struct EchoService;

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "edgewarden.e2e.Echo";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for EchoService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != METHOD {
                return Ok(Status::unimplemented(request.uri().path().to_string()).into_http());
            }
            Ok(tonic::server::Grpc::new(RawCodec).unary(Say, request).await)
        })
    }
}

/// Starts the gRPC upstream on a free loopback port; it serves until the test ends.
async fn grpc_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(EchoService)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}

/// Envoy with the gRPC upstream as cluster `grpc` (HTTP/2) and calls to the test service routed to it.
async fn stack() -> Stack {
    let upstream = grpc_upstream().await;
    Stack::start_customised(
        base_config(),
        json!({"keys": []}),
        &[("grpc", upstream)],
        |bootstrap, _| {
            for cluster in bootstrap["static_resources"]["clusters"]
                .as_array_mut()
                .expect("clusters")
            {
                if cluster["name"] == "grpc" {
                    cluster["typed_extension_protocol_options"] = json!({
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}}
                        }
                    });
                }
            }
            let routes = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
                [0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"];
            let routes = routes.as_array_mut().expect("routes");
            for prefix in ["/edgewarden.e2e.Echo/", "/admin/edgewarden.e2e.Echo/"] {
                routes.insert(
                    0,
                    json!({"match": {"prefix": prefix}, "route": {"cluster": "grpc", "timeout": "10s"}}),
                );
            }
        },
    )
    .await
}

/// One unary call of `method` through Envoy with tonic's client, with `authorization: Bearer <token>` when given.
async fn call(
    stack: &Stack,
    method: &'static str,
    token: Option<&str>,
    message: &[u8],
) -> Result<Vec<u8>, Status> {
    let channel = Channel::from_shared(format!("http://{}", stack.listener))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to envoy over h2c");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("channel ready");
    let mut request = Request::new(message.to_vec());
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii token"),
        );
    }
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(method),
            RawCodec,
        )
        .await
        .map(Response::into_inner)
}

/// The refusal a call got, with what a gRPC client sees of it.
fn refused(result: Result<Vec<u8>, Status>, what: &str) -> Status {
    match result {
        Ok(answer) => panic!(
            "{what}: expected a refusal, got an answer: {:?}",
            String::from_utf8_lossy(&answer)
        ),
        Err(status) => status,
    }
}

fn header(status: &Status, name: &str) -> String {
    status
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Asserts the answer was trailers-only, as Envoy's own filters answer: the status came in the response's one header
/// block. tonic reads a status from the headers only when they carry `grpc-status` (and then hands over that block,
/// `content-type` and `date` included, as the status's metadata); a status from trailers would carry the trailers,
/// which have neither.
fn assert_trailers_only(status: &Status, what: &str) {
    assert_eq!(
        header(status, "content-type"),
        "application/grpc",
        "{what}: {status:?}"
    );
    assert!(
        !header(status, "date").is_empty(),
        "{what}: the status did not come with the response headers: {status:?}"
    );
}

#[tokio::test]
async fn refused_grpc_calls_get_unauthenticated_or_permission_denied_with_the_description() {
    let stack = stack().await;

    // No token: UNAUTHENTICATED, the description as the message, the bare challenge.
    let status = refused(call(&stack, METHOD, None, b"hello").await, "no token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "no token presented");
    assert_eq!(header(&status, "www-authenticate"), r#"Bearer realm="e2e""#);
    assert_trailers_only(&status, "no token");

    // An expired token: UNAUTHENTICATED with the figures the HTTP answer's error_description has.
    let expired = TokenBuilder::new(TestKey::Es256A)
        .scope("read")
        .expires_in(-3600)
        .sign();
    let status = refused(
        call(&stack, METHOD, Some(&expired), b"hello").await,
        "expired",
    );
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().starts_with("token expired ") && status.message().contains("(leeway "),
        "{status:?}"
    );
    assert!(!status.message().contains(&expired));
    assert!(
        header(&status, "www-authenticate")
            .contains(r#"error="invalid_token", error_description="token expired""#),
        "{status:?}"
    );
    assert_trailers_only(&status, "expired");
    // The HTTP answer to the same token carries the same description.
    let http = stack
        .get_with_token("/edgewarden.e2e.Echo/Say", &expired)
        .send()
        .await
        .expect("http request");
    assert_eq!(http.status(), 401);
    let body: Value = http.json().await.expect("json body");
    let described = body["error_description"].as_str().unwrap_or_default();
    // Seconds may tick between the two requests; the sentence is the same.
    assert_eq!(
        described.split(" ago").nth(1),
        status.message().split(" ago").nth(1),
        "{described} vs {}",
        status.message()
    );

    // A description with non-ASCII text and a '%' travels percent-encoded and arrives as sent.
    let foreign = TokenBuilder::new(TestKey::Es256A)
        .claim("iss", "https://émetteur.example/100%")
        .sign();
    let status = refused(
        call(&stack, METHOD, Some(&foreign), b"hello").await,
        "foreign issuer",
    );
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.message(),
        r#"issuer "https://émetteur.example/100%" is not configured"#
    );

    // A valid token without the scope the matched rule needs: PERMISSION_DENIED, the scope challenge.
    let reader = TokenBuilder::new(TestKey::Es256A).scope("read").sign();
    let status = refused(
        call(&stack, ADMIN_METHOD, Some(&reader), b"hello").await,
        "missing scope",
    );
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("admin"), "{status:?}");
    let challenge = header(&status, "www-authenticate");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#)
            && challenge.contains(r#"scope="admin""#),
        "{challenge}"
    );
    assert_trailers_only(&status, "missing scope");
}

#[tokio::test]
async fn an_allowed_grpc_call_reaches_the_grpc_upstream_with_the_claims_forwarded() {
    let stack = stack().await;
    let token = TokenBuilder::new(TestKey::Es256A)
        .subject("grpc-alice")
        .scope("read")
        .sign();
    let answer = call(&stack, METHOD, Some(&token), b"hello upstream")
        .await
        .unwrap_or_else(|status| panic!("the allowed call was refused: {status:?}"));
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "grpc-alice|hello upstream"
    );
    // The HTTP echo upstream saw none of it.
    assert_eq!(stack.upstream.hits(), 0);
}
