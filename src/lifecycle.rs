//! The typed volume lifecycle: what kind a volume is, and its state on two
//! independent axes, attachment and residency (DESIGN.md §5).
//!
//! The axes are separate because shelving needs both at once: a detached
//! volume can be shelved, and an attached one stays browsable while shelved.
//! Each axis allows its changes in exactly one function
//! ([`Attachment::can_go_to`], [`Residency::can_go_to`]), so a new feature
//! (shelving, shipped drives) extends one table instead of adding string
//! comparisons across the manager and the daemon.
//!
//! A leaf module (it imports only the error type): the catalog, the volume
//! manager, the filesystem core and the control replies all share it
//! without depending on one another.
//!
//! The catalog keeps these as TEXT columns holding [`as_str`](Kind::as_str),
//! and the wire and `--json` carry the same lowercase strings (serde
//! `rename_all = "lowercase"`), so changing the types changed neither.
//! A string that is not one of them, read back from the catalog, is a
//! `corrupt` error, never a panic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Implements `as_str`, `Display` (padding like a `str`, for tables),
/// `ALL` and a parser returning a `corrupt` error for one lifecycle enum.
macro_rules! lifecycle_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The string the catalog, the wire and `--json` use.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $s),+
                }
            }

            /// Parses a string read from the catalog (or a peer); anything
            /// else is `corrupt`, naming `context` (which row) and the value.
            pub fn parse(s: &str, context: &str) -> Result<Self> {
                match s {
                    $($s => Ok($ty::$variant),)+
                    _ => Err(Error::new(
                        ErrorKind::Corrupt,
                        format!("{context}: unknown volume {} {s:?}", $what),
                    )),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

/// What a volume is, which decides how it is attached, mounted, recovered
/// and checked. Shipped drives (`drive`) and tape cartridges (`tape`) will
/// be added here, each with its own row in the kind registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A writable volume whose data lives in the chunk store.
    Native,
    /// A read-only tar or zip file attached by path.
    Archive,
}

lifecycle_enum!(Kind, "kind", { Native => "native", Archive => "archive" });

/// Whether a volume is in the mount.
///
/// The catalog stores `attached` and `detached`. `missing` is what a volume
/// recorded as attached is while it is not mounted (its medium is gone or
/// unreadable); `destroyed` is what a destroy returns, after the row is
/// gone. Neither is written to the catalog today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attachment {
    Attached,
    Detached,
    Missing,
    Destroyed,
}

lifecycle_enum!(Attachment, "state", {
    Attached => "attached",
    Detached => "detached",
    Missing => "missing",
    Destroyed => "destroyed",
});

impl Attachment {
    /// The one table of allowed attachment changes.
    ///
    /// - attach: from `detached` or `missing` (the medium is back), and from
    ///   `attached` when the medium changed and is indexed again;
    /// - detach: only from `attached` (a missing volume is not in the mount,
    ///   so there is nothing to detach);
    /// - a medium found gone at start-up: `attached` to `missing`;
    /// - destroy: from any state but `destroyed`, which is final.
    pub fn can_go_to(self, next: Attachment) -> bool {
        use Attachment::*;
        matches!(
            (self, next),
            (Attached | Detached | Missing, Attached)
                | (Attached, Detached | Missing)
                | (Attached | Detached | Missing, Destroyed)
        )
    }

    /// [`can_go_to`](Self::can_go_to) as a `Result`: `next`, or an
    /// `invalid` error naming `what` (the volume) and both states.
    pub fn transition(self, next: Attachment, what: &str) -> Result<Attachment> {
        if self.can_go_to(next) {
            Ok(next)
        } else {
            Err(Error::new(
                ErrorKind::Invalid,
                format!("{what}: a volume that is {self} cannot become {next}"),
            ))
        }
    }

    /// The state a volume shows: what the catalog records, except that one
    /// recorded as attached but not in the mount is `missing`.
    pub fn live(recorded: Attachment, mounted: bool) -> Attachment {
        match recorded {
            Attachment::Attached if !mounted => Attachment::Missing,
            s => s,
        }
    }
}

/// Where a volume's data is: all in the hot tier, or (with shelving) in the
/// durable tier. Every volume is `hot` until shelving exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Residency {
    /// Everything is in the hot tier.
    #[default]
    Hot,
    /// A shelve is in progress.
    Shelving,
    /// The data is only in the durable tier.
    Shelved,
    /// A whole-volume recall is running.
    Recalling,
    /// Some chunks were recalled or written since the shelve.
    Partial,
}

lifecycle_enum!(Residency, "residency", {
    Hot => "hot",
    Shelving => "shelving",
    Shelved => "shelved",
    Recalling => "recalling",
    Partial => "partial",
});

impl Residency {
    /// The one table of allowed residency changes.
    ///
    /// - a shelve starts from `hot` or `partial`, and ends `shelved`, or
    ///   `partial` if writes landed hot meanwhile, or rolls back to `hot`;
    /// - a range recall or a write makes a `shelved` volume `partial`, and
    ///   evicting the recalled chunks again makes it `shelved`;
    /// - a whole recall starts from `shelved` or `partial`, and ends `hot`,
    ///   or `partial` if it stopped part way.
    pub fn can_go_to(self, next: Residency) -> bool {
        use Residency::*;
        matches!(
            (self, next),
            (Hot | Partial, Shelving)
                | (Shelving, Shelved | Partial | Hot)
                | (Shelved, Partial)
                | (Partial, Shelved)
                | (Shelved | Partial, Recalling)
                | (Recalling, Hot | Partial)
        )
    }

    /// [`can_go_to`](Self::can_go_to) as a `Result`: `next`, or an
    /// `invalid` error naming `what` (the volume) and both states.
    pub fn transition(self, next: Residency, what: &str) -> Result<Residency> {
        if self.can_go_to(next) {
            Ok(next)
        } else {
            Err(Error::new(
                ErrorKind::Invalid,
                format!("{what}: a volume that is {self} cannot become {next}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_match_serde() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str(), "t").unwrap(), *k);
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
        for a in Attachment::ALL {
            assert_eq!(Attachment::parse(a.as_str(), "t").unwrap(), *a);
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::json!(a.as_str())
            );
        }
        for r in Residency::ALL {
            assert_eq!(Residency::parse(r.as_str(), "t").unwrap(), *r);
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.as_str())
            );
        }
        // The strings of today, exactly.
        assert_eq!(Kind::Native.as_str(), "native");
        assert_eq!(Kind::Archive.as_str(), "archive");
        assert_eq!(Attachment::Missing.to_string(), "missing");
        assert_eq!(format!("{:<9}|", Attachment::Attached), "attached |");
        assert_eq!(Residency::default(), Residency::Hot);
    }

    #[test]
    fn unknown_strings_are_corrupt_not_panics() {
        for bad in ["", "Native", "drive", "attached ", "\u{0}"] {
            let e = Kind::parse(bad, "catalog row 7").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            assert!(e.to_string().contains("catalog row 7"), "{e}");
        }
        assert_eq!(
            Attachment::parse("gone", "x").unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        assert_eq!(
            Residency::parse("cold", "x").unwrap_err().kind(),
            ErrorKind::Corrupt
        );
        assert!(serde_json::from_str::<Kind>("\"drive\"").is_err());
    }

    #[test]
    fn attachment_transitions() {
        use Attachment::*;
        let allowed = [
            (Attached, Attached),
            (Detached, Attached),
            (Missing, Attached),
            (Attached, Detached),
            (Attached, Missing),
            (Attached, Destroyed),
            (Detached, Destroyed),
            (Missing, Destroyed),
        ];
        for from in Attachment::ALL {
            for to in Attachment::ALL {
                let ok = allowed.contains(&(*from, *to));
                assert_eq!(from.can_go_to(*to), ok, "{from} -> {to}");
                match from.transition(*to, "vol-1") {
                    Ok(s) => assert_eq!(s, *to),
                    Err(e) => {
                        assert!(!ok);
                        assert_eq!(e.kind(), ErrorKind::Invalid);
                        assert!(e.to_string().contains("vol-1"), "{e}");
                    }
                }
            }
        }
        // Refusals that matter: destroyed is final; a volume not in the
        // mount cannot be detached.
        assert!(!Destroyed.can_go_to(Attached));
        assert!(!Missing.can_go_to(Detached));
        assert!(!Detached.can_go_to(Detached));
    }

    #[test]
    fn live_attachment() {
        use Attachment::*;
        assert_eq!(Attachment::live(Attached, true), Attached);
        assert_eq!(Attachment::live(Attached, false), Missing);
        assert_eq!(Attachment::live(Detached, false), Detached);
    }

    #[test]
    fn residency_transitions() {
        use Residency::*;
        let allowed = [
            (Hot, Shelving),
            (Partial, Shelving),
            (Shelving, Shelved),
            (Shelving, Partial),
            (Shelving, Hot),
            (Shelved, Partial),
            (Partial, Shelved),
            (Shelved, Recalling),
            (Partial, Recalling),
            (Recalling, Hot),
            (Recalling, Partial),
        ];
        for from in Residency::ALL {
            for to in Residency::ALL {
                let ok = allowed.contains(&(*from, *to));
                assert_eq!(from.can_go_to(*to), ok, "{from} -> {to}");
                assert_eq!(from.transition(*to, "v").is_ok(), ok);
            }
        }
        assert!(!Hot.can_go_to(Shelved), "a shelve is never skipped");
        assert!(!Shelved.can_go_to(Hot), "a recall is never skipped");
    }
}
