//! The `#[shoal::task]` entry macro.
//!
//! It keeps the function as written (so it can be unit-tested natively) and, on wasm, adds an
//! export named `shoal_task:<name>` that runs it and maps its `Result` to the ABI's status.
//! Misuse is a compile error that points at the offending tokens.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{FnArg, ItemFn, LitStr, ReturnType, parse_macro_input, spanned::Spanned};

/// See `shoal::task`.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut name: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown #[shoal::task] option; the only option is `name = \"...\"`"))
        }
    });
    parse_macro_input!(attr with parser);
    let func = parse_macro_input!(item as ItemFn);
    match expand(name, func) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(name: Option<LitStr>, func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    let fail = |span: &dyn quote::ToTokens, msg: &str| Err(syn::Error::new_spanned(span, msg));
    if let Some(a) = &sig.asyncness {
        return fail(
            a,
            "a shoal task cannot be async: write `fn name(ctx: &mut Ctx) -> Result<(), Error>`",
        );
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return fail(&sig.generics, "a shoal task cannot be generic");
    }
    if let Some(u) = &sig.unsafety {
        return fail(u, "a shoal task cannot be `unsafe`");
    }
    if sig.inputs.len() != 1 || matches!(sig.inputs.first(), Some(FnArg::Receiver(_))) {
        return Err(syn::Error::new(
            sig.inputs
                .span()
                .join(sig.ident.span())
                .unwrap_or(sig.ident.span()),
            "a shoal task takes exactly one argument: `ctx: &mut shoal::Ctx`",
        ));
    }
    if let ReturnType::Default = sig.output {
        return fail(
            &sig.ident,
            "a shoal task must return `Result<(), shoal::Error>`",
        );
    }
    let ident = &sig.ident;
    let export = name.map(|n| n.value()).unwrap_or_else(|| ident.to_string());
    if export.is_empty()
        || !export
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return fail(
            ident,
            "a task name may only use ASCII letters, digits, `_` and `-`",
        );
    }
    let export_name = format!("shoal_task:{export}");
    let shim = format_ident!("__shoal_task_{}", ident);
    Ok(quote! {
        #func

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[unsafe(export_name = #export_name)]
        pub extern "C" fn #shim() -> i32 {
            // The signature is checked here too: a wrong argument or return type fails to
            // coerce to this fn pointer, with rustc's own message.
            let f: fn(&mut ::shoal::Ctx) -> ::core::result::Result<(), ::shoal::Error> = #ident;
            ::shoal::__private::run_task(f)
        }

        // Natively, check the signature the same way without exporting anything.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(&mut ::shoal::Ctx) -> ::core::result::Result<(), ::shoal::Error> = #ident;
    })
}
