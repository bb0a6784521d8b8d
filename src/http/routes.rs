//! A router builder that also records its route table (method, path template), so that tests
//! can be generated from the routes that really exist (e.g. the tenant-isolation test walks
//! every organization-scoped route, every admin route, every route's need of credentials).
//! Every area of the API registers its routes through it, so the table is the whole API.

use axum::{handler::Handler, http::Method, routing, Router};

use crate::app::AppState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    pub path: String,
}

#[derive(Default)]
pub struct Routes {
    router: Router<AppState>,
    table: Vec<RouteInfo>,
}

macro_rules! method {
    ($name:ident, $method:ident) => {
        pub fn $name<H, T>(mut self, path: &str, handler: H) -> Self
        where
            H: Handler<T, AppState>,
            T: 'static,
        {
            self.table.push(RouteInfo {
                method: Method::$method,
                path: path.to_string(),
            });
            self.router = self.router.route(path, routing::$name(handler));
            self
        }
    };
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    method!(get, GET);
    method!(post, POST);
    method!(put, PUT);
    method!(patch, PATCH);
    method!(delete, DELETE);

    /// A route for every method (the gateway's proxy routes): recorded once per standard method.
    pub fn any<H, T>(mut self, path: &str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            self.table.push(RouteInfo {
                method,
                path: path.to_string(),
            });
        }
        self.router = self.router.route(path, routing::any(handler));
        self
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    pub fn table(&self) -> &[RouteInfo] {
        &self.table
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
