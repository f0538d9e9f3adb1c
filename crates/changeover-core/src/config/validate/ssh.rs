//! `[ssh]`: how hosts are reached (config file, user, connection limit and timeout).

use super::{expand_home, Validator};
use crate::config::raw::RawSsh;
use crate::path;
use crate::plan::SshSettings;
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn ssh(&mut self, raw: RawSsh) -> SshSettings {
        let max_connections = match raw.max_connections {
            None => 64,
            Some(n) if n >= 1 => n as usize,
            Some(n) => {
                self.err(
                    path!["ssh", "max_connections"],
                    format!("max_connections = {n} would never connect"),
                    "must be at least 1",
                    "set how many SSH connections may be opened at once, e.g. 64",
                );
                64
            }
        };
        SshSettings {
            config_file: raw.config_file.map(|f| expand_home(&f)),
            user: raw.user,
            max_connections,
            connect_timeout: self.duration(
                path!["ssh", "connect_timeout"],
                raw.connect_timeout.as_ref(),
                Duration::from_secs(10),
                false,
            ),
            control_persist: self.duration(
                path!["ssh", "control_persist"],
                raw.control_persist.as_ref(),
                Duration::from_secs(60),
                false,
            ),
        }
    }
}
