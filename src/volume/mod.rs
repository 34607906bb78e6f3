//! Volumes: the kinds behind one trait and one table ([`kinds`]), the
//! archive (tar, zip) and native (writable, chunk store) kinds, opening the
//! media of volumes attached by reference ([`open`]), and the manager that
//! keeps the registry and the lifecycle ([`manager`]).

pub mod archive;
pub mod kinds;
pub mod manager;
pub mod native;
pub mod open;
