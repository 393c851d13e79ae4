// The shopgraph shop front: plain DOM code over the JSON API, no build step and no libraries.
// Routes live in the URL hash so every view can be bookmarked and reloaded:
//   #/search?q=...   text search        #/photo        the last photo search
//   #/product/ID     product + related  #/user/ID      a shopper's recommendations
// Every request path is relative, so the page also works when the API sits under a prefix.
"use strict";

(() => {
  const SEARCH_K = 12;
  const RELATED_K = 8;
  const RECOMMEND_K = 12;
  const PICKER_USERS = 50;
  const HINTS = {
    0: "The shop server cannot be reached",
    404: "Not found",
    413: "Too large",
    415: "Unsupported file",
    422: "Invalid request",
    500: "Server error",
    503: "Not available right now",
  };

  const content = document.getElementById("content");
  const errorBox = document.getElementById("error");
  const statusBox = document.getElementById("status");
  let generation = 0; // bumped per view, so a late answer never paints over a newer view
  let lastPhoto = null; // {name, body}: the last photo search, shown again at #/photo

  class ApiError extends Error {
    constructor(status, detail) {
      super(`${HINTS[status] || `Error ${status}`} (${status}): ${detail}`);
      this.status = status;
    }
  }

  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      throw new ApiError(0, err.message);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : response.statusText;
      throw new ApiError(response.status, detail);
    }
    return body;
  }

  /** Builds an element; attributes are set as attributes, children appended as text/nodes. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  const enc = encodeURIComponent;
  const imageUrl = (id) => `products/${enc(id)}/image`;
  const productHref = (id) => `#/product/${enc(id)}`;

  function showError(err) {
    errorBox.textContent = err instanceof ApiError ? err.message : `Unexpected error: ${err}`;
    errorBox.hidden = false;
  }

  function clearMessages() {
    errorBox.hidden = true;
    errorBox.textContent = "";
    statusBox.textContent = "";
  }

  /** Starts a view: clears the page and returns a check that it is still the current view. */
  function beginView(loading) {
    const mine = ++generation;
    clearMessages();
    content.replaceChildren();
    statusBox.textContent = loading;
    content.setAttribute("aria-busy", "true");
    return () => mine === generation;
  }

  function endView(isCurrent) {
    if (isCurrent()) {
      statusBox.textContent = "";
      content.removeAttribute("aria-busy");
    }
  }

  // ---- product cards -------------------------------------------------------------------------
  function placeholder(title) {
    const initial = (title || "?").trim().charAt(0).toUpperCase() || "?";
    return el("div", {
      class: "placeholder", role: "img", "aria-label": `No photo of ${title || "this product"}`,
      "data-testid": "image-placeholder",
    }, initial);
  }

  function photo(id, title) {
    const img = el("img", {
      src: imageUrl(id), alt: `Photo of ${title || id}`, "data-testid": "product-image",
    });
    img.addEventListener("error", () => img.replaceWith(placeholder(title)), { once: true });
    return img;
  }

  /** A thumbnail: the photo when the product has one, a lettered placeholder otherwise. */
  function thumbnail(id, title, hasImage) {
    return el("div", { class: "thumb" }, hasImage ? photo(id, title) : placeholder(title));
  }

  /**
   * One product in a grid. `item` has id and title, and brand/image/category/reasons when the
   * endpoint gives them (recommendations, related); search hits are completed from
   * GET /products/{id}, which says the brand and whether there is a photo.
   */
  function card(item, isCurrent) {
    const known = "image" in item;
    const thumb = thumbnail(item.id, item.title, known && Boolean(item.image));
    const brand = el("p", { class: "card-brand", "data-testid": "card-brand" }, item.brand || "");
    const body = el("li", { class: "card", "data-testid": "product-card", "data-product-id": item.id },
      el("a", { href: productHref(item.id), class: "card-link" },
        thumb,
        el("span", { class: "card-title", "data-testid": "card-title" }, item.title || item.id)),
      brand,
      item.category ? el("p", { class: "card-category" }, item.category) : null);
    if (item.reasons && item.reasons.length) {
      body.append(el("ul", { class: "reasons", "data-testid": "reasons",
                             "aria-label": `Why ${item.title || item.id}` },
        item.reasons.map((reason) => el("li", {}, reason))));
    }
    if (!known) {
      api(`products/${enc(item.id)}`).then((product) => {
        if (!isCurrent()) return;
        brand.textContent = productBrand(product);
        if (product.properties.image) {
          thumb.replaceWith(thumbnail(item.id, item.title, true));
        }
      }).catch(() => { /* the card still shows the title; details are a bonus */ });
    }
    return body;
  }

  function grid(items, testid, isCurrent, empty) {
    if (!items.length) return el("p", { class: "empty", "data-testid": `${testid}-empty` }, empty);
    return el("ul", { class: "grid", "data-testid": testid }, items.map((i) => card(i, isCurrent)));
  }

  function productBrand(product) {
    const brand = product.brand;
    if (!brand) return "";
    return String(brand.properties.name || brand.id);
  }

  // ---- views ---------------------------------------------------------------------------------
  function home() {
    beginView("");
    content.append(el("section", { class: "intro", "data-testid": "home" },
      el("h2", {}, "Welcome"),
      el("p", {}, "Search the catalog by words or with a photo, open a product to see related "
        + "items, or pick a shopper to see what the recommender suggests and why.")));
    document.title = "shopgraph shop front";
  }

  function understood(result) {
    const concepts = (result.understood && result.understood.concepts) || [];
    const type = result.understood && result.understood.image_type;
    const parts = concepts.map(([kind, value]) => `${kind}: ${value}`);
    if (type) parts.push(`looks like: ${type}`);
    return parts.length ? el("p", { class: "understood", "data-testid": "understood" },
      `Understood as ${parts.join(", ")}`) : null;
  }

  function showResults(heading, result, isCurrent) {
    content.append(el("section", { "data-testid": "search-results" },
      el("h2", {}, heading),
      understood(result),
      grid(result.hits, "product-grid", isCurrent, "No products match.")));
  }

  async function search(q) {
    const isCurrent = beginView("Searching…");
    document.getElementById("search-q").value = q;
    document.title = `${q} – shopgraph`;
    try {
      const result = await api(`search?q=${enc(q)}&k=${SEARCH_K}`);
      if (isCurrent()) showResults(`Results for “${q}”`, result, isCurrent);
    } catch (err) {
      if (isCurrent()) showError(err);
    } finally {
      endView(isCurrent);
    }
  }

  async function photoSearch(file) {
    const isCurrent = beginView("Searching by photo…");
    document.title = "Photo search – shopgraph";
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("k", String(SEARCH_K));
    try {
      const result = await api("search/image", { method: "POST", body: form });
      lastPhoto = { name: file.name, result };
      if (isCurrent()) showResults(`Products like ${file.name}`, result, isCurrent);
    } catch (err) {
      if (isCurrent()) showError(err);
    } finally {
      endView(isCurrent);
    }
  }

  function photoView() {
    const isCurrent = beginView("");
    document.title = "Photo search – shopgraph";
    if (lastPhoto) {
      showResults(`Products like ${lastPhoto.name}`, lastPhoto.result, isCurrent);
    } else {
      content.append(el("p", { class: "empty" }, "Choose a photo above to find similar products."));
    }
  }

  function details(product) {
    const rows = [];
    const add = (name, value) => {
      if (value !== "" && value !== null && value !== undefined) {
        rows.push(el("dt", {}, name), el("dd", {}, String(value)));
      }
    };
    add("Brand", productBrand(product));
    const paths = product.categories.map((c) => c.id);
    add("Category", paths.sort((a, b) => b.length - a.length)[0] || "");
    for (const attribute of product.attributes) {
      const p = attribute.properties;
      add(p.kind ? String(p.kind) : "attribute", p.value !== undefined ? p.value : attribute.id);
    }
    for (const [name, value] of Object.entries(product.properties)) {
      if (!["id", "title", "image"].includes(name)) {
        add(name.replace(/_/g, " "), Array.isArray(value) ? value.join(", ") : value);
      }
    }
    return el("dl", { class: "details", "data-testid": "product-details" }, rows);
  }

  async function productView(id) {
    const isCurrent = beginView("Loading product…");
    const relatedPromise = api(`products/${enc(id)}/related?k=${RELATED_K}`);
    relatedPromise.catch(() => {}); // handled below; avoids an "unhandled rejection" report
    try {
      const product = await api(`products/${enc(id)}`);
      if (!isCurrent()) return;
      const title = String(product.properties.title || product.id);
      document.title = `${title} – shopgraph`;
      const related = el("section", { class: "related", "data-testid": "related" },
        el("h3", {}, "Related products"));
      content.append(el("article", { class: "product", "data-testid": "product-page",
                                     "data-product-id": product.id },
        el("div", { class: "product-photo" },
          thumbnail(product.id, title, Boolean(product.properties.image))),
        el("div", {},
          el("h2", { "data-testid": "product-title" }, title),
          el("p", { class: "product-id" }, `Product ${product.id}`),
          details(product))),
        related);
      try {
        const answer = await relatedPromise;
        if (isCurrent()) {
          related.append(grid(answer.items, "related-grid", isCurrent, "No related products."));
        }
      } catch (err) {
        if (isCurrent()) {
          related.append(el("p", { class: "error", role: "alert", "data-testid": "related-error" },
            err instanceof ApiError ? err.message : String(err)));
        }
      }
    } catch (err) {
      if (isCurrent()) showError(err);
    } finally {
      endView(isCurrent);
    }
  }

  async function userView(id) {
    const isCurrent = beginView("Loading recommendations…");
    document.getElementById("user-id").value = id;
    document.title = `For ${id} – shopgraph`;
    try {
      const answer = await api(
        `users/${enc(id)}/recommendations?k=${RECOMMEND_K}&explain=true`);
      if (!isCurrent()) return;
      content.append(el("section", { "data-testid": "user-page", "data-user-id": id },
        el("h2", {}, `Recommended for shopper ${id}`),
        el("p", { class: "version" }, `Recommender version ${answer.version}`),
        grid(answer.items, "recommendation-grid", isCurrent, "Nothing to recommend yet.")));
    } catch (err) {
      if (isCurrent()) showError(err);
    } finally {
      endView(isCurrent);
    }
  }

  // ---- routing and forms ---------------------------------------------------------------------
  function route() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const cut = hash.indexOf("?");
    const path = cut < 0 ? hash : hash.slice(0, cut);
    const params = new URLSearchParams(cut < 0 ? "" : hash.slice(cut + 1));
    const [, view, ...rest] = path.split("/");
    const id = rest.length ? decodeURIComponent(rest.join("/")) : "";
    if (view === "search" && params.get("q")) return search(params.get("q"));
    if (view === "photo") return photoView();
    if (view === "product" && id) return productView(id);
    if (view === "user" && id) return userView(id);
    return home();
  }

  /** Goes to `hash`, re-running the view when it is already the current one. */
  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  document.getElementById("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = document.getElementById("search-q").value.trim();
    if (q) go(`#/search?q=${enc(q)}`);
  });

  document.getElementById("photo-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = document.getElementById("photo-input").files[0];
    if (!file) {
      clearMessages();
      errorBox.textContent = "Choose a photo first.";
      errorBox.hidden = false;
      return;
    }
    if (location.hash !== "#/photo") history.pushState(null, "", "#/photo");
    photoSearch(file);
  });

  document.getElementById("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = document.getElementById("user-id").value.trim();
    if (id) go(`#/user/${enc(id)}`);
  });

  async function fillUserPicker() {
    try {
      const answer = await api(`users?limit=${PICKER_USERS}`);
      document.getElementById("user-ids").replaceChildren(
        ...answer.users.map((u) => el("option", { value: u })));
    } catch {
      // no recommender loaded yet: shopper ids can still be typed in
    }
  }

  window.addEventListener("hashchange", route); // also fires on back/forward between views
  fillUserPicker();
  route();
})();
