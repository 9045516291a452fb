//! Integration tests of the PostgreSQL backend against a real server (`DATABASE_URL`). Each test
//! works in a schema of its own, so they run in parallel.

mod common;
mod dead_letters;
mod elector;
mod enqueue;
mod enqueuer;
mod identifiers;
mod inbox;
mod migrations;
mod retention;
mod status;
mod trace;
