//! `tcp` health probe: the port accepts a connection.

use super::http::format_duration;
use changeover_core::health::HealthProbe;
use changeover_core::template::{Template, Vars};
use changeover_core::unit::Unit;
use std::time::Duration;
use tokio::net::TcpStream;

pub struct TcpProbe {
    /// `host:port`, e.g. `{address}:8080`.
    addr: Template,
    timeout: Duration,
}

impl TcpProbe {
    pub fn new(addr: Template, timeout: Duration) -> TcpProbe {
        TcpProbe { addr, timeout }
    }

    fn addr_for(&self, unit: &Unit) -> String {
        self.addr.render(&Vars::for_unit(unit, "", "", ""))
    }
}

#[async_trait::async_trait]
impl HealthProbe for TcpProbe {
    async fn probe(&self, unit: &Unit) -> Result<(), String> {
        let addr = self.addr_for(unit);
        match tokio::time::timeout(self.timeout, TcpStream::connect(addr.as_str())).await {
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Err("connection refused".to_string())
            }
            Ok(Err(e)) => Err(format!("cannot connect: {e}")),
            Err(_) => Err(format!("timed out after {}", format_duration(self.timeout))),
        }
    }

    fn describe(&self, unit: &Unit) -> String {
        format!("tcp://{}", self.addr_for(unit))
    }
}
