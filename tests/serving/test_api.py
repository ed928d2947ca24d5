"""`mnist-flax serve` (mnist_flax/serving/api.py, batching.py): the API through FastAPI's in-process
client, every bad input of issue #15 one test, batching counted, and one live server drained
by SIGTERM. The page in a real browser: tests/serving/test_browser.py."""

import asyncio
import base64
import concurrent.futures
import io
import pathlib
import signal
import struct
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('fastapi', reason="the 'serve' extra is not installed")
pytest.importorskip('multipart', reason="the 'serve' extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from mnist_flax import data  # noqa: E402
from mnist_flax.serving import batching, api
from mnist_flax.inference import ensemble, predict
from serve_helpers import LiveServer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = sorted((REPO / 'experiments' / 'samples').glob('*'))
PHOTO = REPO / 'experiments' / 'samples' / '2_phone_photo.jpg'


@pytest.fixture(scope='module')
def mnist_test(idx_dir):
  return (data.read_idx(idx_dir / 't10k-images-idx3-ubyte.gz'),
          data.read_idx(idx_dir / 't10k-labels-idx1-ubyte.gz'))


@pytest.fixture(scope='module')
def classifier():
  return ensemble.load_ensemble([None])


class Gated:
  """The pretrained classifier with a gate on its predict calls: a closed gate holds a call
  (so requests pile up behind it, or warm-up never ends), and each call's batch size is kept."""

  def __init__(self, inner):
    self.inner, self.gate, self.sizes = inner, threading.Event(), []
    self.gate.set()

  def __getattr__(self, name):
    return getattr(self.inner, name)

  def probabilities(self, images):
    assert self.gate.wait(60), 'gate never opened'
    self.sizes.append(len(images))
    return self.inner.probabilities(images)


def _wait_ready(client, seconds=120):
  deadline = time.time() + seconds
  while time.time() < deadline:
    if client.get('/healthz').status_code == 200:
      return
    time.sleep(0.05)
  raise AssertionError('server never became healthy')


@pytest.fixture(scope='module')
def client(classifier):
  app = api.create_app(classifier, api.Settings(max_body_bytes=2 * 2 ** 20, max_images=8,
                                                    batch_sizes=(1, 2, 4, 8)))
  with TestClient(app) as c:
    _wait_ready(c)
    yield c


def _png(image, mode='L') -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8), mode).save(buffer, 'PNG')
  return buffer.getvalue()


def _canvas_png(digit) -> bytes:
  """An MNIST digit as the page sends it: black ink on a white 280x280 canvas."""
  big = Image.fromarray(255 - np.asarray(digit, np.uint8)).resize((280, 280), Image.Resampling.BILINEAR)
  return _png(np.asarray(big))


def _assert_error(response, status, code, *words):
  assert response.status_code == status, response.text
  body = response.json()
  assert set(body) == {'error', 'detail'} and body['error'] == code, body
  for word in words:
    assert word in body['detail'], body
  return body


@pytest.fixture
def still_serves(client):
  """After the test's bad request, the server still answers a good one."""
  yield
  response = client.post('/v1/predict', files=[('file', ('p.jpg', PHOTO.read_bytes()))])
  assert response.status_code == 200 and response.json()['predictions'][0]['label'] == 2


# ---------------------------------------------------------------------------- good requests


def test_page_is_served_by_the_app_with_nothing_from_outside(client):
  response = client.get('/')
  assert response.status_code == 200 and 'text/html' in response.headers['content-type']
  page = response.text
  assert '<canvas id="pad"' in page and 'pointerdown' in page and '/v1/predict' in page
  assert 'name="viewport"' in page
  assert 'http://' not in page and 'https://' not in page  # no CDN: works offline


def test_multipart_predictions_are_the_cli_classifier_s_with_its_json_keys(client, classifier):
  files = [('file', (p.name, p.read_bytes())) for p in SAMPLES]
  response = client.post('/v1/predict?top_k=5', files=files)
  assert response.status_code == 200, response.text
  body = response.json()
  expected = classifier.classify(SAMPLES, top_k=5)
  assert body['model'] == 'pretrained' and len(body['predictions']) == len(SAMPLES)
  for got, want in zip(body['predictions'], expected):
    assert set(got) == set(want.to_dict(classifier.name))  # the keys of `predict --json`
    assert got['file'] == pathlib.Path(want.source).name and got['label'] == want.label
    assert got['probability'] == pytest.approx(want.probability, abs=1e-5)
    assert [t['label'] for t in got['top_k']] == [k for k, _ in want.top_k]
  assert [p['label'] for p in body['predictions']] == [int(p.name[0]) for p in SAMPLES]


def test_json_base64_pixels_and_raw_image_bodies(client, mnist_test):
  images, labels = mnist_test
  data_url = 'data:image/png;base64,' + base64.b64encode(_canvas_png(images[1])).decode()
  body = {'images': [{'base64': base64.b64encode(_canvas_png(images[0])).decode(), 'name': 'a'},
                     {'base64': data_url}, {'pixels': images[2].tolist()},
                     {'pixels': (images[3] / 255.0).tolist()}]}
  response = client.post('/v1/predict?seen=true', json=body)
  assert response.status_code == 200, response.text
  predictions = response.json()['predictions']
  assert [p['label'] for p in predictions] == labels[:4].tolist()
  assert [p['file'] for p in predictions] == ['a', 'image 1', 'image 2', 'image 3']
  seen = np.asarray(predictions[2]['seen'])
  assert seen.shape == (28, 28) and np.abs(seen - images[2]).max() <= 3  # MNIST passes through
  response = client.post('/v1/predict', content=PHOTO.read_bytes(),
                         headers={'content-type': 'image/jpeg'})
  assert response.status_code == 200 and response.json()['predictions'][0]['label'] == 2


def test_model_health_and_openapi(client, classifier):
  assert client.get('/healthz').json()['status'] == 'ok'
  info = client.get('/v1/model').json()
  summary = classifier.members[0].summary
  assert info['name'] == 'pretrained' and info['architecture'] == summary['model']
  assert info['parameters'] == summary['params'] and info['step'] == summary['steps']
  assert info['test_accuracy'] == summary['test_accuracy']
  assert info['batching']['batch_sizes'] == [1, 2, 4, 8] and info['limits']['max_images'] == 8
  schema = client.get('/openapi.json').json()
  content = schema['paths']['/v1/predict']['post']['requestBody']['content']
  assert {'multipart/form-data', 'application/json'} <= set(content)
  assert {'/v1/predict', '/v1/model', '/healthz'} <= set(schema['paths'])


def test_no_request_waits_for_a_compilation(client, mnist_test):
  """Every batch shape was compiled at start-up: requests of any size add none."""
  images = mnist_test[0]
  before = predict.predict._cache_size()  # pylint: disable=protected-access
  for n in (1, 3, 5, 8):
    response = client.post('/v1/predict', json={'images': [{'pixels': x.tolist()} for x in images[:n]]})
    assert response.status_code == 200
  assert predict.predict._cache_size() == before  # pylint: disable=protected-access


# ---------------------------------------------------------------------------- bad input


def test_body_over_the_limit_is_413(client, still_serves):
  big = b'\0' * (2 * 2 ** 20 + 1)
  _assert_error(client.post('/v1/predict', files=[('file', ('big.png', big))]), 413,
                'body_too_large', 'limit')


def test_streamed_body_over_the_limit_is_413_without_content_length(client, still_serves):
  def chunks():
    for _ in range(40):
      yield b'\0' * 65536
  response = client.post('/v1/predict', content=chunks(), headers={'content-type': 'image/png'})
  _assert_error(response, 413, 'body_too_large', 'limit')


def test_non_image_is_422(client, still_serves):
  _assert_error(client.post('/v1/predict', files=[('file', ('notes.png', b'hello, world'))]),
                422, 'bad_image', 'notes.png', 'not an image')


def test_truncated_image_is_422(client, still_serves):
  cut = PHOTO.read_bytes()[:3000]
  _assert_error(client.post('/v1/predict', files=[('file', ('cut.jpg', cut))]), 422,
                'bad_image', 'cut.jpg', 'cannot decode')


def test_blank_image_is_422(client, still_serves):
  _assert_error(client.post('/v1/predict', files=[('file', ('white.png', _png(np.full((280, 280), 255))))]),
                422, 'no_digit', 'no digit found')


def test_empty_file_is_422(client, still_serves):
  _assert_error(client.post('/v1/predict', files=[('file', ('empty.png', b''))]), 422,
                'bad_image', 'empty')


def _bomb_png(width=100_000, height=100_000) -> bytes:
  """A 60-byte PNG that claims 10 gigapixels (a decompression bomb's header)."""
  def chunk(kind, payload):
    return (struct.pack('>I', len(payload)) + kind + payload
            + struct.pack('>I', zlib.crc32(kind + payload) & 0xffffffff))
  header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
          + chunk(b'IEND', b''))


def test_decompression_bomb_is_413(client, still_serves):
  _assert_error(client.post('/v1/predict', files=[('file', ('bomb.png', _bomb_png()))]), 413,
                'image_too_large', 'bomb.png', 'megapixels')


@pytest.mark.parametrize('content_type', ['text/plain', 'application/x-www-form-urlencoded', None])
def test_wrong_content_type_is_415(client, still_serves, content_type):
  headers = {'content-type': content_type} if content_type else {}
  response = client.post('/v1/predict', content=b'x=1', headers=headers)
  if content_type is None:  # httpx adds none for raw bytes
    assert 'content-type' not in {k.lower() for k in response.request.headers}
  _assert_error(response, 415, 'unsupported_media_type', 'multipart/form-data', 'application/json')


def test_malformed_json_is_400(client, still_serves):
  response = client.post('/v1/predict', content=b'{"images": [', headers={'content-type': 'application/json'})
  _assert_error(response, 400, 'bad_json', 'malformed JSON')


def test_json_of_the_wrong_structure_is_422(client, still_serves):
  _assert_error(client.post('/v1/predict', json={'pictures': []}), 422, 'bad_request', 'images')
  _assert_error(client.post('/v1/predict', json={'images': [{}]}), 422, 'bad_request', 'exactly one')


def test_malformed_base64_is_400(client, still_serves):
  _assert_error(client.post('/v1/predict', json={'images': [{'base64': 'not base64!'}]}), 400,
                'bad_base64', 'image 0', 'base64')


def test_too_many_images_is_422(client, still_serves):
  files = [('file', (f'{i}.jpg', PHOTO.read_bytes())) for i in range(9)]
  _assert_error(client.post('/v1/predict', files=files), 422, 'too_many_images', '9', 'limit is 8')


def test_no_image_is_422(client, still_serves):
  _assert_error(client.post('/v1/predict', json={'images': []}), 422, 'no_images')
  _assert_error(client.post('/v1/predict', files={'other': ('x.png', b'1')}), 422,
                'unexpected_field', 'other')


@pytest.mark.parametrize('shape', [(27, 28), (28, 27), (28, 28, 3), (784,), (0,)])
def test_wrong_array_shape_is_422(client, still_serves, shape):
  pixels = np.zeros(shape).tolist()
  response = client.post('/v1/predict', json={'images': [{'pixels': pixels}]})
  _assert_error(response, 422, 'bad_shape', 'image 0', '28 rows of 28 numbers')


def test_pixel_values_out_of_range_are_422(client, still_serves):
  _assert_error(client.post('/v1/predict', json={'images': [{'pixels': np.full((28, 28), 300).tolist()}]}),
                422, 'bad_pixels', '0 to 255')


def test_malformed_multipart_is_400(client, still_serves):
  body = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nabc'
  response = client.post('/v1/predict', content=body,
                         headers={'content-type': 'multipart/form-data; boundary=xyz'})
  assert response.status_code in (400, 422), response.text
  assert response.json()['error'] in ('bad_multipart', 'bad_image', 'no_images')
  response = client.post('/v1/predict', content=b'abc',
                         headers={'content-type': 'multipart/form-data'})  # no boundary
  _assert_error(response, 400, 'bad_multipart')


def test_bad_query_is_422(client, still_serves):
  _assert_error(client.post('/v1/predict?top_k=11', content=PHOTO.read_bytes(),
                            headers={'content-type': 'image/jpeg'}), 422, 'bad_request', 'top_k')


@pytest.mark.parametrize('path', ['/../../etc/passwd', '/%2e%2e/%2e%2e/etc/passwd',
                                  '/static/../pyproject.toml', '/mnist_flax/serving/api.py',
                                  '/index.html', '/static/index.html'])
def test_paths_never_reach_the_file_system(client, path):
  response = client.get(path)
  _assert_error(response, 404, 'not_found')
  assert 'root:' not in response.text


def test_wrong_method_is_405_json(client):
  _assert_error(client.get('/v1/predict'), 405, 'method_not_allowed')


# ---------------------------------------------------------------------------- batching, warm-up


def _concurrent_posts(client, bodies):
  with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
    return list(pool.map(lambda b: client.post('/v1/predict', files=[('file', ('c.png', b))]), bodies))


@pytest.mark.parametrize('batching,max_wait_ms', [(True, 20.0), (True, 0.0), (False, 0.0)])
def test_concurrent_requests_share_predict_calls(classifier, mnist_test, batching, max_wait_ms):
  images, labels = mnist_test
  gated = Gated(classifier)
  app = api.create_app(gated, api.Settings(batch_sizes=(1, 2, 4, 8, 16),
                                               max_wait_ms=max_wait_ms, batching=batching))
  bodies = [_canvas_png(images[i]) for i in range(12)]
  with TestClient(app) as c:
    _wait_ready(c)
    gated.sizes.clear()
    gated.gate.clear()  # the first call holds; the other requests queue behind it
    threading.Timer(1.0, gated.gate.set).start()
    responses = _concurrent_posts(c, bodies)
    stats = app.state.service.batcher.stats
  assert all(r.status_code == 200 for r in responses)
  assert [r.json()['predictions'][0]['label'] for r in responses] == labels[:12].tolist()
  assert stats.requests == 12 and stats.images == 12
  if batching:  # one call waited at the gate, the others were gathered behind it
    assert stats.calls <= 3 and set(gated.sizes) <= {1, 2, 4, 8, 16}, gated.sizes
    assert max(gated.sizes) >= 8
  else:
    assert stats.calls == 12 and gated.sizes == [1] * 12


def test_idle_batcher_dispatches_a_lone_request_without_waiting(monkeypatch):
  """The default (no max wait): a request that finds the predict thread idle never waits for
  company; with a positive max wait the same request does wait (so the check can fail)."""
  waits = []
  real_wait_for = asyncio.wait_for

  async def counting_wait_for(awaitable, timeout):
    waits.append(timeout)
    return await real_wait_for(awaitable, timeout)
  monkeypatch.setattr(batching.asyncio, 'wait_for', counting_wait_for)

  async def one_request(max_wait_s):
    batcher = batching.MicroBatcher(lambda x: np.ones((len(x), 10), np.float32),
                                    batch_sizes=(1, 2), max_wait_s=max_wait_s)
    batcher.start()
    probs = await batcher.submit(np.zeros((1, 28, 28), np.uint8))
    await batcher.stop()
    return probs.shape, batcher.stats.calls

  assert api.Settings().max_wait_ms == 0
  assert asyncio.run(one_request(api.Settings().max_wait_ms / 1000)) == ((1, 10), 1)
  assert waits == []
  assert asyncio.run(one_request(0.003)) == ((1, 10), 1)
  assert waits and 0 < waits[0] <= 0.003


def test_unhealthy_and_refusing_until_warm(classifier):
  gated = Gated(classifier)
  gated.gate.clear()  # warm-up cannot finish
  app = api.create_app(gated, api.Settings(batch_sizes=(1, 2), max_images=2))
  with TestClient(app) as c:
    assert c.get('/healthz').status_code == 503
    response = c.post('/v1/predict', content=PHOTO.read_bytes(), headers={'content-type': 'image/jpeg'})
    _assert_error(response, 503, 'warming_up', 'healthz')
    assert response.headers['retry-after'] == '1'
    gated.gate.set()
    _wait_ready(c)
    assert c.post('/v1/predict', content=PHOTO.read_bytes(),
                  headers={'content-type': 'image/jpeg'}).status_code == 200


def test_serve_without_the_extra_says_what_to_install(monkeypatch, capsys):
  from mnist_flax import cli
  monkeypatch.setitem(sys.modules, 'fastapi', None)  # import fails as if not installed
  assert cli.main(['serve']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'pip install "mnist_flax[serve]"' in err[0] and 'fastapi' in err[0]


# ---------------------------------------------------------------------------- a live server


@pytest.mark.slow
def test_live_server_logs_access_and_drains_on_sigterm():
  import httpx  # pylint: disable=import-outside-toplevel
  # A batch waits up to 3 s for more requests: the six below are surely in flight at SIGTERM.
  server = LiveServer('--max-wait-ms', '3000', '--max-batch', '8')
  try:
    assert httpx.get(server.url + '/').status_code == 200, server.output()

    def post(_):
      response = httpx.post(server.url + '/v1/predict', content=PHOTO.read_bytes(),
                            headers={'content-type': 'image/jpeg'}, timeout=60)
      return response, time.time()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      futures = [pool.submit(post, i) for i in range(6)]
      deadline = time.time() + 60
      while (httpx.get(server.url + '/v1/model').json()['batching']['stats']['requests'] < 6
             and time.time() < deadline):
        time.sleep(0.05)
      signalled = time.time()
      code = server.stop(signal.SIGTERM)
      results = [f.result() for f in futures]
  finally:
    server.stop(signal.SIGKILL)
  responses = [r for r, _ in results]
  assert all(t > signalled for _, t in results)  # answered after the signal: drained
  output = server.output()
  assert [r.status_code for r in responses] == [200] * 6, output
  assert all(r.json()['predictions'][0]['label'] == 2 for r in responses)
  assert code == 0, output
  assert 'Uvicorn running on http://127.0.0.1:' in output  # the default bind: this machine only
  assert output.count('"POST /v1/predict HTTP/1.1" 200') == 6  # access log, the usual format
  assert '"GET / HTTP/1.1" 200' in output and '"GET /v1/model HTTP/1.1" 200' in output and 'stopped by SIGTERM' in output
  assert 'Traceback' not in output
