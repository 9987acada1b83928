"""The fast layer (`make test-fast`): tests that start no server process, no worker process and
no browser. Routes run in this process through httpx.ASGITransport against the app with a fake
launcher, the job manager and liveness run with fakes at their seams (a launcher, a clock), and
the detector, hub and page modules are tested as pure code. A test that needs uvicorn, a worker
or Chromium belongs in tests/, not here (docs/testing.md)."""
