//! End-to-end suites of kv-rotator, in `tests/tests/`: the worker's real parts (dev vault
//! over TLS through the official SDK, webhook over HTTP, engine, rotators) against the
//! machine's real services. See the README for the services they need.
