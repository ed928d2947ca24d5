"""`mnist-flax serve`: the classifier behind a versioned HTTP API and a page to draw on.

    GET  /             the page: draw a digit (mouse, finger, pen) or drop an image file
    POST /v1/predict   one or more images -> per image the keys of `mnist-flax predict --json`
    GET  /v1/model     the model's name, parameters, step, test accuracy; batching settings
    GET  /healthz      200 once every batch shape is compiled, 503 while warming up
    GET  /docs, /openapi.json   the schema FastAPI generates

`POST /v1/predict` takes multipart `file` fields (one per image), JSON
`{"images": [{"base64": ...} | {"pixels": 28x28 numbers}, ...]}` (the model's image size), or a
raw `image/*` body. Every image goes through the preprocessing of the model's data set
(`preprocess.prepare`; MNIST's steps for handwriting), on a thread pool, off the event loop, then
through `batching.MicroBatcher`, which gathers concurrent requests into one call of the jitted
`predict.predict`, so this is the classifier `mnist-flax predict` is, batched.

Bad input is a JSON 4xx `{"error": CODE, "detail": what is wrong and what is valid}`, never a
500: the body is read up to a limit (413), the content type must be one of the above (415), the
JSON and base64 must parse (400), and the images must decode to something with a digit within
the pixel limit (422; 413 for a decompression bomb). No request path reaches the file system:
the page is read from the package once, at start-up.

Needs the `serve` extra (FastAPI, uvicorn, python-multipart): `pip install 'mnist_flax[serve]'`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import importlib.resources
import io
import logging
import os
import time
from typing import Optional

import jax
import numpy as np
import pydantic
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from mnist_flax.serving import batching
from mnist_flax.inference import predict as predict_lib, preprocess as prep
from mnist_flax.errors import ImageError, ImageTooLargeError, NoDigitError

log = logging.getLogger('mnist_flax.serving.api')

JSON_TYPE, MULTIPART_TYPE = 'application/json', 'multipart/form-data'
VALID_TYPES = (f'{MULTIPART_TYPE} (one "file" field per image), {JSON_TYPE} '
               '({"images": [{"base64": ...} or {"pixels": 28x28 numbers}]}) or image/* (one image)')


@dataclasses.dataclass(frozen=True)
class Settings:
  """The server's limits and batching; `mnist-flax serve` flags set them."""
  max_body_bytes: int = 10 * 2 ** 20  # a 12-megapixel phone JPEG is 3-6 MB
  max_images: int = 16  # per request
  batch_sizes: tuple[int, ...] = batching.DEFAULT_BATCH_SIZES
  max_wait_ms: float = 0.0  # dispatch at once when idle; batches form while predict is busy
  batching: bool = True
  preprocess_threads: int = 0  # 0: one per CPU core


class ApiError(Exception):
  """A client error, answered as JSON `{"error": code, "detail": detail}` with `status`."""

  def __init__(self, status: int, code: str, detail: str):
    super().__init__(detail)
    self.status, self.code, self.detail = status, code, detail


# ---------------------------------------------------------------------------- schema (OpenAPI)


class ImageIn(pydantic.BaseModel):
  """One image of a JSON request: exactly one of `base64` and `pixels`."""
  model_config = pydantic.ConfigDict(extra='forbid')
  base64: Optional[str] = pydantic.Field(
      None, description='an encoded image file (PNG, JPEG, ...), base64; a data: URL also works')
  pixels: Optional[list] = pydantic.Field(  # checked by _pixels_array, with a clearer message
      None, description='the rows of grey levels of the model\'s image size (MNIST: 28 rows of '
                        '28), 0-255 (or 0-1), either polarity; [r, g, b] lists for a colour one',
      json_schema_extra={'items': {'type': 'array', 'items': {'type': 'number'}}})
  name: Optional[str] = pydantic.Field(None, description="echoed back as the result's `file`")


class PredictJson(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra='forbid')
  images: list[ImageIn]


class TopK(pydantic.BaseModel):
  label: int
  class_name: str
  probability: float


class PredictionOut(pydantic.BaseModel):
  """The keys of `mnist-flax predict --json`; `seen` only with `?seen=true`."""
  file: str
  label: int
  class_name: str = pydantic.Field(description="the label's name in the model's data set")
  probability: float
  top_k: list[TopK]
  model: str
  seen: Optional[list[list[int]]] = pydantic.Field(
      None, description='the image the model saw (MNIST: 28x28, white on black, 0-255)')


class PredictOut(pydantic.BaseModel):
  model: str
  predictions: list[PredictionOut]


class ErrorOut(pydantic.BaseModel):
  error: str
  detail: str


PREDICT_BODY = {'requestBody': {'required': True, 'content': {
    MULTIPART_TYPE: {'schema': {'type': 'object', 'properties': {'file': {
        'type': 'array', 'items': {'type': 'string', 'format': 'binary'}}}}},
    JSON_TYPE: {'schema': PredictJson.model_json_schema(ref_template='#/components/schemas/{model}')},
    'image/*': {'schema': {'type': 'string', 'format': 'binary'}},
}}}
ERRORS = {status: {'model': ErrorOut, 'description': text} for status, text in (
    (400, 'malformed JSON, base64 or multipart body'), (413, 'body or image too large'),
    (415, 'unsupported content type'), (422, 'not an image, no digit, too many images, bad shape'),
    (503, 'warming up'))}


# ---------------------------------------------------------------------------- reading requests


async def read_body(request: Request, limit: int) -> bytes:
  """The body, refused with 413 as soon as it is known to exceed `limit` (header or stream)."""
  length = request.headers.get('content-length')
  if length is not None:
    if not length.isdigit():
      raise ApiError(400, 'bad_content_length', f'Content-Length {length!r} is not a number')
    if int(length) > limit:
      raise ApiError(413, 'body_too_large', f'the body is {int(length)} bytes; the limit is '
                                            f'{limit} bytes ({limit / 2 ** 20:.0f} MiB)')
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise ApiError(413, 'body_too_large', f'the body is over the limit of {limit} bytes '
                                            f'({limit / 2 ** 20:.0f} MiB)')
    chunks.append(chunk)
  return b''.join(chunks)


async def multipart_images(request: Request, body: bytes) -> list[tuple[str, bytes]]:
  """(name, bytes) of each `file` part of a multipart body already read (so already bounded)."""

  async def replay():
    return {'type': 'http.request', 'body': body, 'more_body': False}
  try:
    form = await Request(request.scope, replay).form(max_files=1000, max_fields=1000)
  except (MultiPartException, StarletteHTTPException) as e:
    detail = getattr(e, 'message', None) or getattr(e, 'detail', str(e))
    raise ApiError(400, 'bad_multipart', f'malformed multipart body: {detail}') from None
  images = []
  try:
    for key, value in form.multi_items():
      if key != 'file':
        raise ApiError(422, 'unexpected_field', f'unexpected multipart field {key!r}; send each '
                                                'image as a "file" field')
      if isinstance(value, str):
        raise ApiError(422, 'not_a_file', 'a "file" field must be a file upload (filename=...), '
                                          'not a text value')
      images.append((value.filename or f'image {len(images)}', await value.read()))
  finally:
    await form.close()
  return images


def _b64_bytes(text: str, name: str) -> bytes:
  if text.startswith('data:'):  # a data: URL, as canvas.toDataURL() gives
    _, _, text = text.partition(',')
  try:
    return base64.b64decode(text, validate=True)
  except (binascii.Error, ValueError) as e:
    raise ApiError(400, 'bad_base64', f'{name}: "base64" is not valid base64 ({e})') from None


def _pixels_array(rows: list, name: str, image_shape=(28, 28, 1)) -> np.ndarray:
  """H rows of W numbers (of W [r, g, b] triples for a colour data set) -> float32 (H, W[, 3]);
  anything else is a 422 saying what it got."""
  height, width, channels = image_shape
  cell = 'numbers' if channels == 1 else f'[{", ".join("rgb"[:channels])}] lists'
  wanted = f'{name}: "pixels" must be {height} rows of {width} {cell}'
  if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
    raise ApiError(422, 'bad_shape', f'{wanted}; got a list that is not a list of rows')
  lengths = sorted({len(r) for r in rows})
  if len(rows) != height or lengths != [width]:
    raise ApiError(422, 'bad_shape', f'{wanted}; got {len(rows)} rows of {lengths} values')
  values = [v for r in rows for v in r]
  if channels > 1:
    if not all(isinstance(v, list) and len(v) == channels for v in values):
      raise ApiError(422, 'bad_shape', f'{wanted}; got pixels that are not {channels} numbers')
    values = [c for v in values for c in v]
  if not all(type(v) in (int, float) for v in values):  # (bool is not a grey level)
    raise ApiError(422, 'bad_shape', f'{wanted}; got values that are not numbers')
  array = np.asarray(rows, np.float32)
  if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
    raise ApiError(422, 'bad_pixels', f'{name}: "pixels" must be finite grey levels from 0 to '
                                      '255 (or 0 to 1)')
  return array


def json_images(body: bytes, image_shape=(28, 28, 1)) -> list[tuple[str, object]]:
  """(name, bytes or pixel array) of each image of a JSON body."""
  try:
    request = PredictJson.model_validate_json(body)
  except pydantic.ValidationError as e:
    first = e.errors()[0]
    if first['type'] == 'json_invalid':
      raise ApiError(400, 'bad_json', f'malformed JSON: {first["msg"]}') from None
    where = '.'.join(str(p) for p in first['loc'])
    raise ApiError(422, 'bad_request', f'JSON body: {where}: {first["msg"]}; expected '
                                       '{"images": [{"base64": "..."} or {"pixels": [[...]]}]}'
                   ) from None
  images = []
  for i, item in enumerate(request.images):
    name = item.name or f'image {i}'
    if (item.base64 is None) == (item.pixels is None):
      raise ApiError(422, 'bad_request', f'{name}: give exactly one of "base64" and "pixels"')
    images.append((name, _b64_bytes(item.base64, name) if item.base64 is not None
                   else _pixels_array(item.pixels, name, image_shape)))
  return images


async def request_images(request: Request, settings: Settings,
                         image_shape=(28, 28, 1)) -> list[tuple[str, object]]:
  """Dispatches on the content type; checks the number of images."""
  kind = request.headers.get('content-type', '').split(';')[0].strip().lower()
  if kind not in (JSON_TYPE, MULTIPART_TYPE) and not kind.startswith('image/'):
    raise ApiError(415, 'unsupported_media_type',
                   f'content type {kind or "(none)"!r} is not accepted; send {VALID_TYPES}')
  body = await read_body(request, settings.max_body_bytes)
  if kind == JSON_TYPE:
    images = json_images(body, image_shape)
  elif kind == MULTIPART_TYPE:
    images = await multipart_images(request, body)
  else:
    images = [('image', body)]
  if not images:
    raise ApiError(422, 'no_images', f'the request holds no image; send {VALID_TYPES}')
  if len(images) > settings.max_images:
    raise ApiError(422, 'too_many_images', f'{len(images)} images in one request; the limit is '
                                           f'{settings.max_images}')
  return images


def preprocess_all(images: list[tuple[str, object]], spec=None) -> np.ndarray:
  """On a worker thread: uint8 (k, *spec.image_shape) prepared for the data set `spec` (None:
  MNIST's preprocessing, (k, 28, 28)), or the first image's error as an ApiError."""
  out = []
  for name, source in images:
    try:
      out.append(prep.preprocess(source, name=name[:200]) if spec is None
                 else prep.prepare(source, spec, name=name[:200]))
    except ImageTooLargeError as e:
      raise ApiError(413, 'image_too_large', str(e)) from None
    except NoDigitError as e:
      raise ApiError(422, 'no_digit', str(e)) from None
    except ImageError as e:
      shape = spec.image_shape if spec is not None else (28, 28, 1)
      raise ApiError(422, 'bad_image', f'{e}; valid: PNG, JPEG, GIF, BMP, TIFF, WebP images of '
                                       f'a {getattr(spec, "noun", "digit")}, or {shape[0]}x'
                                       f'{shape[1]} {"grey levels" if shape[2] == 1 else "pixels"}'
                     ) from None
  return np.stack(out)


# ---------------------------------------------------------------------------- the app


def model_info(classifier) -> dict:
  """Name, architecture, parameters, step and test accuracy of a (one-member or ensemble)
  classifier, from its members' config.json and summary.json."""
  members = []
  for name, member in zip(classifier.names, classifier.members):
    summary = member.summary or {}
    params = summary.get('params') or sum(
        int(np.size(x)) for x in jax.tree.leaves(member.variables['params']))
    members.append({'name': name, 'architecture': member.config.get('model'),
                    'parameters': int(params),
                    'step': member.step if member.step is not None else summary.get('steps'),
                    'test_accuracy': summary.get('test_accuracy')})
  one = members[0] if len(members) == 1 else {}
  spec = classifier.spec
  return {'name': classifier.name, 'architecture': one.get('architecture', 'ensemble'),
          'parameters': sum(m['parameters'] for m in members), 'step': one.get('step'),
          'test_accuracy': one.get('test_accuracy'), 'tta': classifier.tta, 'members': members,
          'dataset': spec.name, 'image_shape': list(spec.image_shape),
          'class_names': list(spec.class_names)}


class Service:
  """What the routes share: the classifier, its batcher, the preprocessing threads, readiness."""

  def __init__(self, classifier, settings: Settings):
    self.classifier, self.settings = classifier, settings
    self.name = classifier.name
    self.spec = classifier.spec  # the data set: image shape, class names, preprocessing
    self.info = model_info(classifier)
    self.batcher = batching.MicroBatcher(classifier.probabilities, settings.batch_sizes,
                                         settings.max_wait_ms / 1000.0, settings.batching,
                                         image_shape=self.spec.image_shape)
    threads = settings.preprocess_threads or os.cpu_count() or 2
    self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix='preprocess')
    self.ready = asyncio.Event()
    self.warm_up_seconds: Optional[float] = None

  def _warm_up(self):
    start = time.perf_counter()
    self.batcher.warm_up()
    sample = Image.new('L', (64, 64), 255)
    sample.paste(0, (24, 12, 40, 52))  # a bar: a "1", through the whole preprocessing path
    buffer = io.BytesIO()
    sample.save(buffer, 'PNG')
    prep.prepare(buffer.getvalue(), self.spec)
    self.warm_up_seconds = time.perf_counter() - start

  async def warm_up(self):
    try:
      await asyncio.get_running_loop().run_in_executor(self.pool, self._warm_up)
    except Exception:  # pylint: disable=broad-except  (stays unhealthy: /healthz keeps 503)
      log.exception('warm-up failed; the server stays unhealthy')
      return
    self.ready.set()
    log.info('ready: %d batch shapes %s compiled in %.1f s; model %s', len(self.batcher.batch_sizes),
             self.batcher.batch_sizes, self.warm_up_seconds, self.name)

  async def predict(self, images, top_k: int, seen: bool) -> dict:
    if not self.ready.is_set():
      raise ApiError(503, 'warming_up', 'the model is still compiling; retry in a second '
                                        '(GET /healthz says when it is ready)')
    loop = asyncio.get_running_loop()
    arrays = await loop.run_in_executor(self.pool, preprocess_all, images, self.spec)
    probs = await self.batcher.submit(arrays)
    names = [name[:200] for name, _ in images]
    predictions = []
    for p in predict_lib.rank(probs, arrays, names, top_k, self.spec.class_names):
      row = p.to_dict(self.name)
      if seen:
        row['seen'] = p.image.tolist()
      predictions.append(row)
    return {'model': self.name, 'predictions': predictions}


def _error(status: int, code: str, detail: str, headers=None) -> JSONResponse:
  return JSONResponse({'error': code, 'detail': detail}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI):
  @app.exception_handler(ApiError)
  async def api_error(request, e: ApiError):
    return _error(e.status, e.code, e.detail, {'Retry-After': '1'} if e.status == 503 else None)

  @app.exception_handler(StarletteHTTPException)
  async def http_error(request, e: StarletteHTTPException):
    code = {404: 'not_found', 405: 'method_not_allowed'}.get(e.status_code, 'http_error')
    detail = (f'no such resource: {request.url.path}; see /docs' if e.status_code == 404
              else str(e.detail))
    return _error(e.status_code, code, detail, getattr(e, 'headers', None))

  @app.exception_handler(RequestValidationError)
  async def validation_error(request, e: RequestValidationError):
    first = e.errors()[0] if e.errors() else {'loc': (), 'msg': 'invalid request'}
    where = '.'.join(str(p) for p in first['loc'])
    return _error(422, 'bad_request', f'{where}: {first["msg"]}')

  @app.exception_handler(Exception)
  async def internal_error(request, e: Exception):  # a bug: logged with its traceback, not sent
    log.exception('internal error on %s %s', request.method, request.url.path)
    return _error(500, 'internal', 'internal server error (logged on the server)')


def page_html() -> str:
  """The drawing page, package data read once (no request path ever reaches the file system)."""
  return (importlib.resources.files('mnist_flax.serving') / 'static' / 'index.html').read_text('utf-8')


def create_app(classifier, settings: Settings = Settings()) -> FastAPI:
  """The ASGI app serving `classifier` (a `load_ensemble` result; one model is one member)."""
  if settings.max_images > settings.batch_sizes[-1]:
    raise ValueError(f'max_images ({settings.max_images}) must not exceed the largest batch '
                     f'({settings.batch_sizes[-1]})')
  service = Service(classifier, settings)
  page = page_html()

  @contextlib.asynccontextmanager
  async def lifespan(app):
    service.batcher.start()
    warm = asyncio.create_task(service.warm_up())
    yield
    await warm  # (a server stopped while compiling waits for it: XLA cannot be interrupted)
    await service.batcher.stop()  # after uvicorn drained the connections: finishes the queue
    service.pool.shutdown(wait=True)
    log.info('stopped: %s', service.batcher.stats.as_dict())

  app = FastAPI(title='mnist_flax', version='1', lifespan=lifespan,
                description='Handwritten digit classification: ' + (__doc__ or '').split('\n\n')[0])
  app.state.service = service
  _install_error_handlers(app)

  @app.get('/', response_class=HTMLResponse, include_in_schema=False)
  async def index():
    return HTMLResponse(page, headers={'Cache-Control': 'no-cache'})

  @app.get('/healthz', responses={503: {'description': 'warming up'}})
  async def healthz():
    if not service.ready.is_set():
      return JSONResponse({'status': 'warming up'}, status_code=503, headers={'Retry-After': '1'})
    return {'status': 'ok', 'model': service.name, 'warm_up_seconds': service.warm_up_seconds}

  @app.get('/v1/model')
  async def model():
    return dict(service.info, batching={
        'enabled': settings.batching, 'batch_sizes': list(service.batcher.batch_sizes),
        'max_wait_ms': settings.max_wait_ms, 'stats': service.batcher.stats.as_dict()},
        limits={'max_body_bytes': settings.max_body_bytes, 'max_images': settings.max_images,
                'max_pixels': prep.MAX_PIXELS})

  @app.post('/v1/predict', response_model=PredictOut, responses=ERRORS, openapi_extra=PREDICT_BODY)
  async def predict(request: Request,
                    top_k: int = Query(3, ge=1, le=10, description='how many ranked labels'),
                    seen: bool = Query(False, description='add the image the model saw')):
    """Classifies one or more images (see the request body's three forms)."""
    images = await request_images(request, settings, service.spec.image_shape)
    return JSONResponse(await service.predict(images, top_k, seen))

  return app
