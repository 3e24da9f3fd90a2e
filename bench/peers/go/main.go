// peer-go: the Phoenix Channels V2 pub/sub server a Go developer would write with
// gorilla/websocket, as a baseline for corecast.
//
// Design (gorilla's chat example, grown topics): one hub goroutine owns the map
// topic -> set of clients and every client's send channel; each connection has a readPump
// goroutine (decodes frames, asks the hub) and a writePump goroutine (drains the client's
// buffered send channel into the socket). A broadcast is encoded once as a
// websocket.PreparedMessage and the same one is queued on every subscriber. A client whose send
// channel is full is dropped (as in the chat example). GOMAXPROCS is Go's default: every core.
//
// Usage: peer-go [--listen] 127.0.0.1:4102
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/gorilla/websocket"
)

// Messages one client may have queued before the hub drops it as a slow consumer.
const sendQueue = 1024

var (
	okReply        = []byte(`{"response":{},"status":"ok"}`)
	unmatchedReply = []byte(`{"response":{"reason":"unmatched topic"},"status":"error"}`)
)

// outbound is one message for a client: a shared prepared broadcast or its own reply.
type outbound struct {
	prepared *websocket.PreparedMessage
	data     []byte
}

type Client struct {
	conn   *websocket.Conn
	send   chan outbound
	topics map[string]bool // owned by the hub goroutine
}

type requestKind int

const (
	reqJoin requestKind = iota
	reqLeave
	reqPush
	reqReply
)

// request asks the hub to act for client (nil for the HTTP API) and then to queue the
// phx_reply for (joinRef, ref, rawTopic) on it: after the broadcast, after the join.
type request struct {
	kind     requestKind
	client   *Client
	topic    string
	frame    *websocket.PreparedMessage // reqPush: the broadcast
	joinRef  json.RawMessage
	ref      json.RawMessage
	rawTopic json.RawMessage
}

type Hub struct {
	topics     map[string]map[*Client]bool
	clients    map[*Client]bool
	register   chan *Client
	unregister chan *Client
	requests   chan request
}

func newHub() *Hub {
	return &Hub{
		topics:     make(map[string]map[*Client]bool),
		clients:    make(map[*Client]bool),
		register:   make(chan *Client),
		unregister: make(chan *Client),
		requests:   make(chan request, 256),
	}
}

// drop forgets c and closes its send channel, which makes its writePump hang up.
func (h *Hub) drop(c *Client) {
	if !h.clients[c] {
		return
	}
	for topic := range c.topics {
		h.unsubscribe(c, topic)
	}
	delete(h.clients, c)
	close(c.send)
}

func (h *Hub) unsubscribe(c *Client, topic string) {
	delete(c.topics, topic)
	if subs := h.topics[topic]; subs != nil {
		delete(subs, c)
		if len(subs) == 0 {
			delete(h.topics, topic)
		}
	}
}

func (h *Hub) queue(c *Client, m outbound) {
	select {
	case c.send <- m:
	default:
		h.drop(c)
	}
}

func (h *Hub) run() {
	for {
		select {
		case c := <-h.register:
			h.clients[c] = true
		case c := <-h.unregister:
			h.drop(c)
		case r := <-h.requests:
			if r.client != nil && !h.clients[r.client] {
				continue
			}
			body := okReply
			switch r.kind {
			case reqJoin:
				subs := h.topics[r.topic]
				if subs == nil {
					subs = make(map[*Client]bool)
					h.topics[r.topic] = subs
				}
				subs[r.client] = true
				r.client.topics[r.topic] = true
			case reqLeave:
				h.unsubscribe(r.client, r.topic)
			case reqPush:
				if r.client != nil && !r.client.topics[r.topic] {
					body = unmatchedReply
					break
				}
				for c := range h.topics[r.topic] {
					h.queue(c, outbound{prepared: r.frame})
				}
			}
			if r.client != nil && h.clients[r.client] {
				h.queue(r.client, outbound{data: reply(r.joinRef, r.ref, r.rawTopic, body)})
			}
		}
	}
}

// frame is [join_ref, ref, topic, event, payload], each kept as raw JSON.
func decode(msg []byte) (raw []json.RawMessage, topic, event string, ok bool) {
	if json.Unmarshal(msg, &raw) != nil || len(raw) != 5 {
		return nil, "", "", false
	}
	if json.Unmarshal(raw[2], &topic) != nil || json.Unmarshal(raw[3], &event) != nil {
		return nil, "", "", false
	}
	return raw, topic, event, true
}

// reply builds [join_ref, ref, topic, "phx_reply", body].
func reply(joinRef, ref, topic json.RawMessage, body []byte) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	b.Write(joinRef)
	b.WriteByte(',')
	b.Write(ref)
	b.WriteByte(',')
	b.Write(topic)
	b.WriteString(`,"phx_reply",`)
	b.Write(body)
	b.WriteByte(']')
	return b.Bytes()
}

// broadcastFrame encodes [null,null,topic,event,payload] once, as a prepared text message.
func broadcastFrame(topic, event, payload json.RawMessage) (*websocket.PreparedMessage, error) {
	var b bytes.Buffer
	b.WriteString("[null,null,")
	b.Write(topic)
	b.WriteByte(',')
	b.Write(event)
	b.WriteByte(',')
	b.Write(payload)
	b.WriteByte(']')
	return websocket.NewPreparedMessage(websocket.TextMessage, b.Bytes())
}

func (c *Client) readPump(h *Hub) {
	defer func() {
		h.unregister <- c
		c.conn.Close()
	}()
	for {
		kind, msg, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		if kind != websocket.TextMessage {
			continue
		}
		raw, topic, event, ok := decode(msg)
		if !ok {
			continue
		}
		r := request{client: c, topic: topic, joinRef: raw[0], ref: raw[1], rawTopic: raw[2]}
		switch {
		case topic == "phoenix" && event == "heartbeat":
			r.kind, r.joinRef = reqReply, json.RawMessage("null")
		case event == "phx_join":
			r.kind = reqJoin
		case event == "phx_leave":
			r.kind = reqLeave
		default:
			r.kind = reqPush
			if r.frame, err = broadcastFrame(raw[2], raw[3], raw[4]); err != nil {
				continue
			}
		}
		h.requests <- r
	}
}

func (c *Client) writePump() {
	defer c.conn.Close()
	for m := range c.send {
		var err error
		if m.prepared != nil {
			err = c.conn.WritePreparedMessage(m.prepared)
		} else {
			err = c.conn.WriteMessage(websocket.TextMessage, m.data)
		}
		if err != nil {
			// Keep draining until the hub closes the channel, so it never blocks on us.
			for range c.send {
			}
			return
		}
	}
	c.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, ""))
}

var upgrader = websocket.Upgrader{
	CheckOrigin: func(r *http.Request) bool { return true },
}

func serveSocket(h *Hub, w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &Client{conn: conn, send: make(chan outbound, sendQueue), topics: make(map[string]bool)}
	h.register <- c
	go c.writePump()
	go c.readPump(h)
}

type apiBroadcast struct {
	Topic   string          `json:"topic"`
	Event   string          `json:"event"`
	Payload json.RawMessage `json:"payload"`
}

func serveAPI(h *Hub, w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var b apiBroadcast
	if err != nil || json.Unmarshal(body, &b) != nil || b.Topic == "" || len(b.Payload) == 0 {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	topic, _ := json.Marshal(b.Topic)
	event, _ := json.Marshal(b.Event)
	frame, err := broadcastFrame(topic, event, b.Payload)
	if err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	h.requests <- request{kind: reqPush, topic: b.Topic, frame: frame}
	w.WriteHeader(http.StatusAccepted)
}

func listenAddr() string {
	args := os.Args[1:]
	switch {
	case len(args) >= 2 && args[0] == "--listen":
		return args[1]
	case len(args) >= 1:
		return args[0]
	}
	return "127.0.0.1:4102"
}

func main() {
	hub := newHub()
	go hub.run()
	mux := http.NewServeMux()
	mux.HandleFunc("/socket/websocket", func(w http.ResponseWriter, r *http.Request) { serveSocket(hub, w, r) })
	mux.HandleFunc("/api/broadcast", func(w http.ResponseWriter, r *http.Request) { serveAPI(hub, w, r) })
	ln, err := net.Listen("tcp", listenAddr())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, mux))
}
