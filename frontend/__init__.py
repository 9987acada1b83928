"""The dashboard's static files (no build step), shipped as package data of `gradwatch.frontend`.

The server finds them with `importlib.resources.files("gradwatch.frontend")`, so a wheel works
wherever it is installed; `vendor/plotly.min.js` is plotly.js 4.1.1 with its license beside it."""
