//! thaw-tests: the harness for thaw's whole-system tests. It starts the real
//! binaries, waits for their readiness messages (never a sleep) and talks
//! HTTP to them.
