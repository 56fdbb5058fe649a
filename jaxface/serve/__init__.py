"""`jaxface serve`: the detector (and a fitted face generator) as an HTTP service with a web page.

engine.py loads and compiles the models (the one module importing the rest of the library);
batcher.py groups concurrent detections into batched calls; uploads.py reads multipart bodies into
memory with limits; app.py holds the routes, errors and metrics; server.py runs it under uvicorn.
"""
