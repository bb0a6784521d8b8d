//! A router builder that also records its route table (method, path template), so that tests
//! can be generated from the routes that really exist (e.g. the tenant-isolation test walks
//! every organization-scoped route, every admin route, every route's need of credentials).
//! Every area of the API registers its routes through it, so the table is the whole API.

use axum::{handler::Handler, http::Method, routing, Router};

use super::openapi::{Documented, DocumentedRoute};
use crate::app::AppState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    pub path: String,
}

/// The router, its route table, and how each route is described in the OpenAPI document
/// (`http::openapi`: the handler's argument and answer types describe it).
#[derive(Default)]
pub struct Routes {
    router: Router<AppState>,
    table: Vec<RouteInfo>,
    docs: Vec<DocumentedRoute>,
}

macro_rules! method {
    ($name:ident, $method:ident) => {
        pub fn $name<H, T, D>(mut self, path: &str, handler: H) -> Self
        where
            H: Handler<T, AppState> + Documented<D>,
            T: 'static,
        {
            self.record(Method::$method, path, <H as Documented<D>>::describe);
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

    /// A route for the five methods an API uses (the gateway's proxy routes), recorded once per
    /// method; any other (`TRACE`, `CONNECT`, …) answers 405.
    pub fn any<H, T, D>(mut self, path: &str, handler: H) -> Self
    where
        H: Handler<T, AppState> + Documented<D>,
        T: 'static,
    {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            self.record(method, path, <H as Documented<D>>::describe);
        }
        let methods = routing::MethodFilter::GET
            .or(routing::MethodFilter::POST)
            .or(routing::MethodFilter::PUT)
            .or(routing::MethodFilter::PATCH)
            .or(routing::MethodFilter::DELETE);
        self.router = self.router.route(path, routing::on(methods, handler));
        self
    }

    fn record(&mut self, method: Method, path: &str, describe: super::openapi::Describe) {
        self.table.push(RouteInfo {
            method: method.clone(),
            path: path.to_string(),
        });
        self.docs.push(DocumentedRoute {
            method,
            path: path.to_string(),
            describe,
        });
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self.docs.extend(other.docs);
        self
    }

    /// How each route is described in the OpenAPI document.
    pub fn documented(&self) -> &[DocumentedRoute] {
        &self.docs
    }

    pub fn table(&self) -> &[RouteInfo] {
        &self.table
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
