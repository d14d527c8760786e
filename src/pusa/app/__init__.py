"""The Pusa web studio (gradio). `pusa serve` starts it; `serve.add_serve_arguments` / `serve.serve_main`
wire it into a command line without importing gradio until it is needed."""
