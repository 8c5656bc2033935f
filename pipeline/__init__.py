"""Build-time asset pipeline for small static sites: fetch, encode, fingerprint, render, minify,
publish atomically. `pipeline build` runs it; see README.md."""
