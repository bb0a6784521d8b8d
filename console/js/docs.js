// The API reference at /docs: Redoc (vendored, console/vendor/redoc-2.5.4) over the server's own
// OpenAPI document, /openapi.json.
const target = document.getElementById('reference');
window.Redoc.init(
  '/openapi.json',
  {
    hideDownloadButton: false,
    expandResponses: '200,201',
    jsonSampleExpandLevel: 2,
    pathInMiddlePanel: true,
    sortTagsAlphabetically: true,
    theme: { typography: { fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif', headings: { fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif' } } },
  },
  target,
  (error) => {
    if (error) {
      target.textContent = `The API document could not be shown: ${error.message || error}`;
    }
  },
);
