//! Typed control calls: each request `tokenctl` can make, tied at compile
//! time to the type of its reply.
//!
//! On the wire a request is still one [`Request`] (tagged by `op`) and a
//! reply is still the JSON of one value; nothing here changes a byte a
//! script sees. What changes is that the reply's type is stated once, in
//! the [`Call`] impl: the client decodes into `C::Reply`
//! ([`Client::call`](super::client::Client::call)), and the daemon answers
//! with a [`Response`], whose variant for each call holds that same type.
//! A handler that returned the wrong value for a request, or a client that
//! expected the wrong one, no longer compiles.
//!
//! `status` and `fsck` each have two calls, because their reply type
//! depends on an argument: `status` with no volume answers
//! [`DaemonStatus`], with one a [`VolumeStatus`]; `fsck --catalog` answers a
//! [`CatalogReport`], other checks a [`Report`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{DaemonStatus, Request};
use crate::fs::VolumeInfo;
use crate::store::guard::CatalogReport;
use crate::token::engine::{Limits, ReadRequest, ReadResult, WriteRequest, WriteResult};
use crate::token::store::TokenInfo;
use crate::volume::manager::{Attached, FormatChoice, VolumeStatus};
use crate::volume::native::fsck::Report;

/// A request whose reply type is known at compile time.
pub trait Call {
    /// What the daemon answers on success.
    type Reply: Serialize + DeserializeOwned;
    /// The request as it goes on the wire.
    fn request(&self) -> Request;
}

/// `ping`'s reply: the daemon's version and pid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pong {
    pub version: String,
    pub pid: u32,
}

/// Declares one call: its struct (or unit struct), its reply type and how
/// it becomes a [`Request`].
macro_rules! call {
    ($(#[$m:meta])* $name:ident => $reply:ty, |$s:ident| $req:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name;
        impl Call for $name {
            type Reply = $reply;
            fn request(&$s) -> Request {
                $req
            }
        }
    };
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident: $t:ty),* $(,)? } => $reply:ty, |$s:ident| $req:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        impl Call for $name {
            type Reply = $reply;
            fn request(&$s) -> Request {
                $req
            }
        }
    };
}

call!(
    /// Liveness and version check.
    Ping => Pong, |self| Request::Ping
);
call!(
    /// Attach a medium (passed as a descriptor alongside) as a volume.
    Attach { path: String, name: Option<String>, format: FormatChoice } => Attached,
    |self| Request::Attach { path: self.path.clone(), name: self.name.clone(), format: self.format }
);
call!(
    /// Every volume in the catalog.
    Volumes => Vec<VolumeInfo>, |self| Request::Volumes
);
call!(
    /// The daemon's status.
    Status => DaemonStatus, |self| Request::Status { volume: None }
);
call!(
    /// One volume's status, by ID or name.
    VolumeStatusOf { volume: String } => VolumeStatus,
    |self| Request::Status { volume: Some(self.volume.clone()) }
);
call!(
    /// Detach a volume; answers what it was.
    Detach { volume: String, force: bool } => VolumeInfo,
    |self| Request::Detach { volume: self.volume.clone(), force: self.force }
);
call!(
    /// Create a native volume.
    Create { name: String } => VolumeInfo, |self| Request::Create { name: self.name.clone() }
);
call!(
    /// Destroy a volume; answers what it was.
    Destroy { volume: String } => VolumeInfo,
    |self| Request::Destroy { volume: self.volume.clone() }
);
call!(
    /// Check native volumes (one, or all and the store).
    Fsck { volume: Option<String>, repair: bool } => Report,
    |self| Request::Fsck { volume: self.volume.clone(), repair: self.repair, catalog: false }
);
call!(
    /// Check the catalog database.
    FsckCatalog => CatalogReport,
    |self| Request::Fsck { volume: None, repair: false, catalog: true }
);
call!(
    /// Offload read: get a token for a file's bytes.
    OffloadRead { req: ReadRequest } => ReadResult, |self| Request::OffloadRead(self.req.clone())
);
call!(
    /// Offload write: write a token's bytes into a file.
    OffloadWrite { req: WriteRequest } => WriteResult,
    |self| Request::OffloadWrite(self.req.clone())
);
call!(
    /// The caller's tokens (every token for root).
    TokenList => Vec<TokenInfo>, |self| Request::TokenList
);
call!(
    /// One token's state, by its hex bytes.
    TokenStatus { token: String } => TokenInfo,
    |self| Request::TokenStatus { token: self.token.clone() }
);
call!(
    /// Revoke a token, by its hex bytes.
    TokenRevoke { token: String } => TokenInfo,
    |self| Request::TokenRevoke { token: self.token.clone() }
);
call!(
    /// The provider's limits.
    TokenLimits => Limits, |self| Request::TokenLimits
);

/// The daemon's answer to a request, one variant per [`Call`], each holding
/// that call's reply type. Serialized as the value alone (untagged), so the
/// JSON on the wire is what it always was.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Response {
    Ping(<Ping as Call>::Reply),
    Attach(<Attach as Call>::Reply),
    Volumes(<Volumes as Call>::Reply),
    Status(<Status as Call>::Reply),
    VolumeStatus(<VolumeStatusOf as Call>::Reply),
    Detach(<Detach as Call>::Reply),
    Create(<Create as Call>::Reply),
    Destroy(<Destroy as Call>::Reply),
    Fsck(<Fsck as Call>::Reply),
    FsckCatalog(<FsckCatalog as Call>::Reply),
    OffloadRead(<OffloadRead as Call>::Reply),
    OffloadWrite(<OffloadWrite as Call>::Reply),
    TokenList(<TokenList as Call>::Reply),
    TokenStatus(<TokenStatus as Call>::Reply),
    TokenRevoke(<TokenRevoke as Call>::Reply),
    TokenLimits(<TokenLimits as Call>::Reply),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A typed reply serializes exactly as the value alone, as the untyped
    /// replies did, and decodes back into the call's reply type.
    #[test]
    fn responses_are_the_bare_value() {
        let pong = Pong {
            version: "1".into(),
            pid: 7,
        };
        let typed = serde_json::to_value(Response::Ping(pong.clone())).unwrap();
        assert_eq!(typed, serde_json::json!({"version": "1", "pid": 7}));
        let back: <Ping as Call>::Reply = serde_json::from_value(typed).unwrap();
        assert_eq!(back, pong);
        let v = serde_json::to_value(Response::Volumes(Vec::new())).unwrap();
        assert_eq!(v, serde_json::json!([]));
    }

    #[test]
    fn calls_build_the_same_requests() {
        assert_eq!(
            VolumeStatusOf { volume: "a".into() }.request(),
            Request::Status {
                volume: Some("a".into())
            }
        );
        assert_eq!(Status.request(), Request::Status { volume: None });
        assert_eq!(
            FsckCatalog.request(),
            Request::Fsck {
                volume: None,
                repair: false,
                catalog: true
            }
        );
        assert_eq!(
            Detach {
                volume: "v".into(),
                force: true
            }
            .request()
            .name(),
            "detach"
        );
    }
}
