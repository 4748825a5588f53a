// Starts Swagger UI on this server's /docs.json (see docs.html); no validator badge (it would call swagger.io).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "./docs.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    requestInterceptor: function (request) {
      const key = document.getElementById("api-key").value.trim();
      if (key) request.headers["Authorization"] = "Bearer " + key;
      return request;
    },
  });
});
