//! One keep-alive HTTP/1.1 client connection for the load generators
//! (bench/push_load.rs, bench/soak_load.rs), and the SayName envelope they
//! send, included by each with `#[path = "http_conn.rs"] mod http_conn;`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection to the gateway (reconnected after a failure).
pub struct Conn {
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(addr: &str) -> Conn {
        Conn {
            addr: addr.to_owned(),
            sender: None,
        }
    }

    async fn connect(&mut self) -> Result<(), String> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.sender = Some(sender);
        Ok(())
    }

    /// Sends one request; the status and body, or why not. Bounded by `limit`
    /// (connecting included); a failed connection is dropped.
    pub async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<(u16, Bytes), String> {
        let result = tokio::time::timeout(limit, async {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                self.connect().await?;
            }
            let sender = self.sender.as_mut().expect("connected");
            sender
                .ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// The seed's SayName envelope for `number`, as the PBX sends it.
pub fn say_name_envelope(number: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <SayName xmlns="http://VATS">
            <Number>{number}</Number>
        </SayName>
    </soap:Body>
</soap:Envelope>
"#
    )
}
