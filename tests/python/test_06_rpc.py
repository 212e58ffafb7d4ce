"""Tutorial 6: RPC - a fibonacci server consumes 'rpc_queue' and replies to
the client's exclusive callback queue (reply_to) with the request's
correlation_id; the client waits for the reply whose id matches."""

import threading
import uuid

import pika
import pytest

from amqp_util import pump


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class FibonacciRpcServer(threading.Thread):
    """rpc_server.py, run in a thread with its own connection."""

    def __init__(self, params: pika.ConnectionParameters, queue: str):
        super().__init__(daemon=True)
        self.params = params
        self.queue = queue
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error = None
        self.handled = 0

    def run(self):
        try:
            connection = pika.BlockingConnection(self.params)
            channel = connection.channel()
            channel.queue_declare(queue=self.queue)
            channel.basic_qos(prefetch_count=1)

            def on_request(ch, method, props, body):
                n = int(body)
                self.handled += 1  # before replying: the client may check it right away
                ch.basic_publish(
                    exchange="",
                    routing_key=props.reply_to,
                    properties=pika.BasicProperties(correlation_id=props.correlation_id),
                    body=str(fib(n)),
                )
                ch.basic_ack(delivery_tag=method.delivery_tag)

            channel.basic_consume(queue=self.queue, on_message_callback=on_request)
            self.ready.set()
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=0.1)
            connection.close()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
            self.ready.set()


class FibonacciRpcClient:
    """rpc_client.py from the tutorial, for pika 1.x."""

    def __init__(self, connection: pika.BlockingConnection, rpc_queue: str):
        self.connection = connection
        self.rpc_queue = rpc_queue
        self.channel = connection.channel()
        result = self.channel.queue_declare(queue="", exclusive=True)
        self.callback_queue = result.method.queue
        self.channel.basic_consume(queue=self.callback_queue,
                                   on_message_callback=self.on_response, auto_ack=True)
        self.response = None
        self.corr_id = None
        self.ignored = []

    def on_response(self, ch, method, props, body):
        if self.corr_id == props.correlation_id:
            self.response = body
        else:
            self.ignored.append((props.correlation_id, body))

    def call(self, n: int, timeout: float = 10.0) -> int:
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(
            exchange="",
            routing_key=self.rpc_queue,
            properties=pika.BasicProperties(reply_to=self.callback_queue,
                                            correlation_id=self.corr_id),
            body=str(n),
        )
        assert pump(self.connection, lambda: self.response is not None, timeout), \
            f"no RPC reply for fib({n}) within {timeout}s"
        return int(self.response)


@pytest.fixture
def rpc_server(broker, names):
    queue = names.queue("rpc_queue")
    server = FibonacciRpcServer(broker.params(), queue)
    server.start()
    assert server.ready.wait(15), "RPC server did not start"
    if server.error:
        raise server.error
    yield server
    server.stopping.set()
    server.join(10)


@pytest.mark.timeout(60)
def test_rpc_fibonacci(connect, rpc_server):
    conn = connect()
    client = FibonacciRpcClient(conn, rpc_server.queue)
    assert client.callback_queue.startswith("amq.gen-")

    # a stale reply sitting in the callback queue must be skipped
    conn.channel().basic_publish(
        exchange="", routing_key=client.callback_queue,
        properties=pika.BasicProperties(correlation_id="stale-id"), body=b"-1")

    for n in [0, 1, 2, 10, 30]:
        assert client.call(n) == fib(n)
    assert fib(30) == 832040
    assert client.ignored == [("stale-id", b"-1")]
    assert rpc_server.handled == 5
    assert rpc_server.error is None


@pytest.mark.timeout(60)
def test_rpc_two_clients_get_their_own_replies(connect, rpc_server):
    c1 = FibonacciRpcClient(connect(), rpc_server.queue)
    c2 = FibonacciRpcClient(connect(), rpc_server.queue)
    assert c1.callback_queue != c2.callback_queue
    for n in range(5, 15):
        assert c1.call(n) == fib(n)
        assert c2.call(n + 20) == fib(n + 20)
    assert c1.ignored == [] and c2.ignored == []
    assert rpc_server.error is None
